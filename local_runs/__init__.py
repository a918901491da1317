"""The launcher: sessions, the local S3 server and the Docker-free SageMaker simulator ("sim").

Import stays light: nothing here imports the SageMaker SDK, boto3 or moto until a
submodule that needs it is imported.
"""
