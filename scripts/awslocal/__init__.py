"""`scripts/aws-local`: the Lambda functions as deployed, on moto, on one machine."""
