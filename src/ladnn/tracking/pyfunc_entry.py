"""Entry file for MLflow's models-from-code logging: declares the LA-DNN pyfunc model."""

from mlflow.models import set_model

from ladnn.tracking.pyfunc import LadnnPyfunc

set_model(LadnnPyfunc())
