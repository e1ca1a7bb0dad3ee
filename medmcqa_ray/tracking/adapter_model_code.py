"""The file MLflow loads an adapter model from (models from code): it names the model, adapter_model.py
defines it."""

import mlflow.models

from medmcqa_ray.tracking.adapter_model import AdapterModel

mlflow.models.set_model(AdapterModel())
