-- One database per store, all owned by the POSTGRES_USER of infra/compose.yaml.
CREATE DATABASE mlflow;
CREATE DATABASE mlflow_auth;
CREATE DATABASE prefect;
CREATE DATABASE ladnn_audit;
