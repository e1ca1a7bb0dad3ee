"""The synthetic sample (`data.source: synthetic`): multiple-choice questions written for medmcqa-ray, in MedMCQA's schema.

NOT MedMCQA. Each question is generated from a table of textbook medical facts (one relation per
table: deficiency -> vitamin, drug -> class, poison -> antidote, ...). Distractors are other answers
of the same relation, so every option is plausible. Each relation has five question templates: two
make the train split and three other, unseen phrasings make the validation split, so validation asks
the same facts in words a model has not been trained on (107 facts: 214 train, 321 validation questions). That gives a small model something it can
measurably learn (the facts) without letting it memorise the wording.

Regenerate the bundled files with `python -m medmcqa_ray.data.synthetic_sample` (deterministic).
"""

from __future__ import annotations

import functools
import json
import random
import uuid
from dataclasses import dataclass
from pathlib import Path

OUT_DIR = Path(__file__).parent / "synthetic"
NAMESPACE = uuid.UUID("6f1d3c1e-6c43-4d0b-9d7a-0f0c1a2b3c4d")


@dataclass(frozen=True)
class Relation:
    name: str
    subject: str
    train_templates: tuple[str, str]
    validation_template: str
    explanation: str
    facts: tuple[tuple[str, str], ...]
    more_validation_templates: tuple[str, ...] = ()


RELATIONS = [
    Relation(
        "vitamin deficiency", "Biochemistry",
        ("{key} is caused by deficiency of:", "Deficiency of which nutrient leads to {key}?"),
        "A patient is diagnosed with {key}. Which nutrient is lacking?",
        "{key} results from a deficiency of {answer}.",
        (("scurvy", "Vitamin C"), ("beriberi", "Thiamine (vitamin B1)"), ("pellagra", "Niacin (vitamin B3)"),
         ("rickets", "Vitamin D"), ("night blindness", "Vitamin A"), ("pernicious anaemia", "Vitamin B12"),
         ("haemorrhagic disease of the newborn", "Vitamin K"), ("angular cheilitis", "Riboflavin (vitamin B2)"),
         ("Wernicke encephalopathy", "Thiamine (vitamin B1)"), ("xerophthalmia", "Vitamin A"),
         ("osteomalacia", "Vitamin D"), ("neural tube defects in the fetus", "Folic acid")),
        more_validation_templates=("Which dietary factor, when lacking, produces {key}?", "The deficiency that underlies {key} is of:"),
    ),
    Relation(
        "causative organism", "Microbiology",
        ("The causative organism of {key} is:", "{key} is caused by:"),
        "Which organism is responsible for {key}?",
        "{key} is caused by {answer}.",
        (("tuberculosis", "Mycobacterium tuberculosis"), ("syphilis", "Treponema pallidum"),
         ("cholera", "Vibrio cholerae"), ("typhoid fever", "Salmonella Typhi"), ("Lyme disease", "Borrelia burgdorferi"),
         ("leprosy", "Mycobacterium leprae"), ("diphtheria", "Corynebacterium diphtheriae"), ("tetanus", "Clostridium tetani"),
         ("whooping cough", "Bordetella pertussis"), ("gonorrhoea", "Neisseria gonorrhoeae"), ("plague", "Yersinia pestis"),
         ("anthrax", "Bacillus anthracis"), ("botulism", "Clostridium botulinum"), ("Q fever", "Coxiella burnetii"),
         ("Legionnaires' disease", "Legionella pneumophila"), ("scarlet fever", "Streptococcus pyogenes")),
        more_validation_templates=("The pathogen that causes {key} is:", "A diagnosis of {key} implicates which microorganism?"),
    ),
    Relation(
        "drug class", "Pharmacology",
        ("{key} belongs to which class of drugs?", "{key} is a:"),
        "Which group of drugs includes {key}?",
        "{key} is a {answer}.",
        (("Atenolol", "beta-adrenergic blocker"), ("Enalapril", "ACE inhibitor"), ("Losartan", "angiotensin II receptor blocker"),
         ("Amlodipine", "calcium channel blocker"), ("Furosemide", "loop diuretic"), ("Hydrochlorothiazide", "thiazide diuretic"),
         ("Atorvastatin", "HMG-CoA reductase inhibitor"), ("Omeprazole", "proton pump inhibitor"), ("Ranitidine", "H2 receptor antagonist"),
         ("Metformin", "biguanide"), ("Glibenclamide", "sulfonylurea"), ("Fluoxetine", "selective serotonin reuptake inhibitor"),
         ("Amitriptyline", "tricyclic antidepressant"), ("Diazepam", "benzodiazepine"), ("Ciprofloxacin", "fluoroquinolone"),
         ("Gentamicin", "aminoglycoside"), ("Azithromycin", "macrolide"), ("Spironolactone", "potassium-sparing diuretic"),
         ("Salbutamol", "beta-2 adrenergic agonist"), ("Ceftriaxone", "cephalosporin")),
        more_validation_templates=("Pharmacologically, {key} is classified as a:", "A patient is prescribed {key}. It is a drug of which class?"),
    ),
    Relation(
        "antidote", "Forensic Medicine",
        ("The antidote for {key} poisoning is:", "{key} toxicity is treated with:"),
        "A patient presents with an overdose of {key}. Which specific antidote should be given?",
        "The specific antidote for {key} is {answer}.",
        (("paracetamol", "N-acetylcysteine"), ("opioid", "Naloxone"), ("benzodiazepine", "Flumazenil"),
         ("organophosphate", "Atropine"), ("methanol", "Fomepizole"), ("heparin", "Protamine sulfate"),
         ("warfarin", "Vitamin K"), ("iron", "Desferrioxamine"), ("digoxin", "Digoxin-specific antibody fragments"),
         ("cyanide", "Hydroxocobalamin"), ("beta-blocker", "Glucagon"), ("nitrite", "Methylene blue")),
        more_validation_templates=("Which agent specifically counteracts {key} overdose?", "In {key} poisoning, the antidote of choice is:"),
    ),
    Relation(
        "hormone source", "Physiology",
        ("{key} is secreted by:", "The source of {key} in the body is:"),
        "Which cells or gland produce {key}?",
        "{key} is produced by the {answer}.",
        (("insulin", "beta cells of the pancreatic islets"), ("glucagon", "alpha cells of the pancreatic islets"),
         ("aldosterone", "zona glomerulosa of the adrenal cortex"), ("cortisol", "zona fasciculata of the adrenal cortex"),
         ("adrenaline", "adrenal medulla"), ("calcitonin", "parafollicular C cells of the thyroid"),
         ("parathyroid hormone", "chief cells of the parathyroid gland"), ("melatonin", "pineal gland"),
         ("erythropoietin", "peritubular interstitial cells of the kidney"), ("growth hormone", "anterior pituitary"),
         ("testosterone", "Leydig cells of the testis"), ("gastrin", "G cells of the gastric antrum")),
        more_validation_templates=("Where in the body is {key} synthesised?", "{key} is released from the:"),
    ),
    Relation(
        "nerve injury", "Anatomy",
        ("{key} results from injury to the:", "Which nerve is damaged in {key}?"),
        "A patient develops {key} after trauma. The nerve most likely injured is:",
        "{key} is the classic sign of injury to the {answer}.",
        (("wrist drop", "radial nerve"), ("claw hand", "ulnar nerve"), ("foot drop", "common peroneal nerve"),
         ("winging of the scapula", "long thoracic nerve"), ("ape thumb deformity", "median nerve"),
         ("loss of shoulder abduction beyond 15 degrees with deltoid wasting", "axillary nerve"),
         ("loss of elbow flexion with numbness of the lateral forearm", "musculocutaneous nerve"),
         ("Trendelenburg gait", "superior gluteal nerve")),
        more_validation_templates=("Which nerve, when injured, causes {key}?", "{key} points to damage of the:"),
    ),
    Relation(
        "karyotype", "Pathology",
        ("The karyotype in {key} is:", "{key} is associated with:"),
        "Which chromosomal abnormality underlies {key}?",
        "{key} is caused by {answer}.",
        (("Down syndrome", "trisomy 21"), ("Edwards syndrome", "trisomy 18"), ("Patau syndrome", "trisomy 13"),
         ("Turner syndrome", "45,X"), ("Klinefelter syndrome", "47,XXY"), ("Cri du chat syndrome", "deletion of 5p"),
         ("chronic myeloid leukaemia", "t(9;22) Philadelphia chromosome"), ("Burkitt lymphoma", "t(8;14)")),
        more_validation_templates=("Cytogenetic analysis in {key} shows:", "The genetic lesion characteristic of {key} is:"),
    ),
    Relation(
        "enzyme deficiency", "Biochemistry",
        ("{key} is due to deficiency of:", "The enzyme deficient in {key} is:"),
        "In {key}, which enzyme is defective?",
        "{key} is caused by deficiency of {answer}.",
        (("phenylketonuria", "phenylalanine hydroxylase"), ("Gaucher disease", "glucocerebrosidase"),
         ("Tay-Sachs disease", "hexosaminidase A"), ("Von Gierke disease", "glucose-6-phosphatase"),
         ("Pompe disease", "acid alpha-glucosidase"), ("Fabry disease", "alpha-galactosidase A"),
         ("Niemann-Pick disease", "sphingomyelinase"), ("Hurler syndrome", "alpha-L-iduronidase"),
         ("Lesch-Nyhan syndrome", "HGPRT"), ("alkaptonuria", "homogentisate oxidase"),
         ("McArdle disease", "muscle glycogen phosphorylase"),
         ("classic galactosaemia", "galactose-1-phosphate uridyltransferase")),
        more_validation_templates=("{key} results from a lack of which enzyme?", "Which enzyme is missing in {key}?"),
    ),
    Relation(
        "tumour marker", "Pathology",
        ("{key} is a tumour marker for:", "Raised serum {key} is most characteristic of:"),
        "A raised level of {key} is used to monitor which cancer?",
        "{key} is the tumour marker of {answer}.",
        (("alpha-fetoprotein", "hepatocellular carcinoma"), ("CA-125", "ovarian carcinoma"),
         ("prostate-specific antigen", "prostate carcinoma"), ("carcinoembryonic antigen", "colorectal carcinoma"),
         ("CA 19-9", "pancreatic carcinoma"), ("calcitonin", "medullary carcinoma of the thyroid"),
         ("beta-hCG", "choriocarcinoma")),
        more_validation_templates=("{key} is characteristically raised in:", "Serial {key} levels are used in the follow-up of:"),
    ),
]


def _capitalise(text: str) -> str:
    return text[:1].upper() + text[1:]


def _question_id(rel: Relation, template: str, key: str) -> str:
    return str(uuid.uuid5(NAMESPACE, f"{rel.name}|{template}|{key}"))


def _question_rows(rel: Relation, template: str, split: str, rng: random.Random) -> list[dict]:
    answers = sorted({a for _, a in rel.facts})
    rows = []
    for key, answer in rel.facts:
        distractors = rng.sample([a for a in answers if a != answer], 3)
        options = distractors + [answer]
        rng.shuffle(options)
        question = template.format(key=key)
        rows.append({
            "id": _question_id(rel, template, key),
            "question": _capitalise(question),
            "opa": options[0], "opb": options[1], "opc": options[2], "opd": options[3],
            "cop": options.index(answer),  # 0-based: Hugging Face layout
            "choice_type": "single",
            "exp": _capitalise(rel.explanation.format(key=key, answer=answer)),
            "subject_name": rel.subject,
            "topic_name": f"Offline sample: {rel.name}",
        })
    return rows


def generate(seed: int = 0) -> dict[str, list[dict]]:
    rng = random.Random(seed)
    splits: dict[str, list[dict]] = {"train": [], "validation": []}
    for rel in RELATIONS:
        for template in rel.train_templates:
            splits["train"] += _question_rows(rel, template, "train", rng)
        splits["validation"] += _question_rows(rel, rel.validation_template, "validation", rng)
    rng.shuffle(splits["train"])
    # Two more unseen phrasings of every fact, from their own random stream and after the first 107: the
    # train split and the first validation questions stay what they were (eval.limit=107 is the old set),
    # and three questions a fact give a held-out comparison the power to see a 5-point change.
    more = random.Random(f"{seed}:more-validation")
    for rel in RELATIONS:
        for template in rel.more_validation_templates:
            splits["validation"] += _question_rows(rel, template, "validation", more)
    return splits


@functools.cache
def _facts_by_id() -> dict[str, str]:
    return {_question_id(rel, template, key): f"{rel.name}|{key}" for rel in RELATIONS
            for template in (*rel.train_templates, rel.validation_template, *rel.more_validation_templates)
            for key, _ in rel.facts}


def fact_of(row: dict) -> str:
    """The fact a generated question asks (relation and key), shared by its phrasings: held-out questions of
    one fact are not independent, so a test over them counts facts (benchmarks/learning.py)."""
    try:
        return _facts_by_id()[row["id"]]
    except KeyError:
        raise KeyError(f"{row['id']} is not a synthetic-sample question") from None


def write(out_dir: Path = OUT_DIR) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    for split, rows in generate().items():
        with (out_dir / f"{split}.jsonl").open("w", encoding="utf-8") as f:
            for row in rows:
                f.write(json.dumps(row, ensure_ascii=False) + "\n")


if __name__ == "__main__":
    write()
    print({split: len(rows) for split, rows in generate().items()}, "->", OUT_DIR)
