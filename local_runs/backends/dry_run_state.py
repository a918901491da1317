"""The dry run's model of SageMaker: what the requests "created", and the answers a real service would give.

Kept apart from the request interception (`dry_run.py`), as moto keeps its models apart from its
responses: this module knows nothing of botocore, HTTP or printing.
"""
from __future__ import annotations

import datetime
import re


class DryRunError(RuntimeError):
    """The dry run was asked to send something it does not model, or to a host off this machine."""


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc)


class FakeSageMaker:
    """Plausible answers for the SageMaker operations the SDK's fit/deploy/predict/delete/transform use."""

    KINDS = {"TrainingJob": "training-job", "Model": "model", "EndpointConfig": "endpoint-config", "Endpoint": "endpoint",
             "TransformJob": "transform-job", "ProcessingJob": "processing-job"}

    def __init__(self, region: str, account: str):
        self.region, self.account = region, account
        self.items: dict[str, dict[str, dict]] = {kind: {} for kind in self.KINDS}
        self.notes: list[str] = []

    def arn(self, kind: str, name: str) -> str:
        return f"arn:aws:sagemaker:{self.region}:{self.account}:{self.KINDS[kind]}/{name.lower()}"

    def __call__(self, operation: str, params: dict) -> dict:
        match = re.match(r"^(Create|Describe|Delete)(TrainingJob|TransformJob|ProcessingJob|Model|EndpointConfig|Endpoint)$", operation)
        if match:
            verb, kind = match.groups()
            return getattr(self, f"_{verb.lower()}")(kind, params[f"{kind}Name"], params)
        if operation == "ListEndpoints":
            return {"Endpoints": [self._describe("Endpoint", name, {}) for name in self.items["Endpoint"]]}
        if operation in ("AddTags", "DeleteTags"):
            return {"Tags": params.get("Tags", [])} if operation == "AddTags" else {}
        if operation == "ListTags":
            return {"Tags": []}
        raise DryRunError(f"the dry run does not model sagemaker:{operation}")

    def _create(self, kind: str, name: str, params: dict) -> dict:
        if name in self.items[kind]:
            raise ValidationFailed(f"Cannot create already existing {self.KINDS[kind].replace('-', ' ')} \"{self.arn(kind, name)}\".")
        self.items[kind][name] = {**params, "CreationTime": _now()}
        return {f"{kind}Arn": self.arn(kind, name)}

    def _delete(self, kind: str, name: str, params: dict) -> dict:
        if self.items[kind].pop(name, None) is None and not self._assumed(kind, name):
            raise ValidationFailed(f"Could not find {self.KINDS[kind].replace('-', ' ')} \"{self.arn(kind, name)}\".")
        return {}

    def _assumed(self, kind: str, name: str) -> bool:
        """Something made by an earlier run (this dry run has no memory of it): assume it exists."""
        self.notes.append(f"{kind} {name} was not created in this dry run; answered as if it existed")
        return True

    def _describe(self, kind: str, name: str, params: dict) -> dict:
        item = self.items[kind].get(name)
        if item is None:
            if kind in ("TrainingJob", "TransformJob", "ProcessingJob", "Model"):
                raise ValidationFailed(f"Could not find {self.KINDS[kind].replace('-', ' ')} \"{self.arn(kind, name)}\" "
                                  "(this dry run did not create it).")
            self._assumed(kind, name)
            item = {"CreationTime": _now()}
            if kind == "Endpoint":
                item["EndpointConfigName"] = name  # what the SDK names it when deploy is given a name
            else:
                item["ProductionVariants"] = [{"VariantName": "AllTraffic", "ModelName": name}]
        base = {k: v for k, v in item.items() if k != "Tags"}
        base.update({f"{kind}Name": name, f"{kind}Arn": self.arn(kind, name), "LastModifiedTime": item["CreationTime"]})
        if kind == "TrainingJob":
            output = item["OutputDataConfig"]["S3OutputPath"].rstrip("/")
            base.update({
                "TrainingJobStatus": "Completed", "SecondaryStatus": "Completed",
                "ModelArtifacts": {"S3ModelArtifacts": f"{output}/{name}/output/model.tar.gz"},
                "TrainingStartTime": item["CreationTime"], "TrainingEndTime": item["CreationTime"],
                "SecondaryStatusTransitions": [{"Status": "Completed", "StartTime": item["CreationTime"],
                                                "StatusMessage": "dry run: nothing was trained"}],
            })
        elif kind == "ProcessingJob":  # the embed step of a two-step fit: Completed at once, no output written
            base.update({"ProcessingJobStatus": "Completed", "ProcessingStartTime": item["CreationTime"],
                         "ProcessingEndTime": item["CreationTime"]})
        elif kind == "TransformJob":
            base.update({"TransformJobStatus": "Completed", "TransformStartTime": item["CreationTime"],
                         "TransformEndTime": item["CreationTime"]})
        elif kind == "Endpoint":
            variants = self.items["EndpointConfig"].get(item["EndpointConfigName"], {}).get(
                "ProductionVariants", [{"VariantName": "AllTraffic", "InitialInstanceCount": 1}])
            base.update({"EndpointStatus": "InService", "ProductionVariants": [
                {"VariantName": v.get("VariantName", "AllTraffic"), "CurrentInstanceCount": v.get("InitialInstanceCount", 1),
                 "DesiredInstanceCount": v.get("InitialInstanceCount", 1)} for v in variants]})
        return base


class ValidationFailed(Exception):
    """A ValidationException, as SageMaker would answer it."""
