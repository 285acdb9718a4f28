"""I2X inside MLOps platforms, one module each, each importing its platform's package lazily:

    i2x.integrations.mlflow   export a run to MLflow; analyse the checkpoints an MLflow run logged
    i2x.integrations.kfp      Kubeflow Pipelines v2 components and the pipeline (deploy/kfp/); their
                              logic, without kfp, in i2x.integrations.kfp_steps
    i2x.integrations.live     analyse while a training job runs (PyTorch hook, Lightning callback)
    i2x.integrations.cli      their flags on `i2x analyze` and the `i2x watch` command
"""
