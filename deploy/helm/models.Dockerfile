# The models image for the Helm chart (models.source=image): the provisioned models and
# nothing else; each model pod's init container copies /models into an emptyDir.
#
#   scripts/provision-models.sh      # once: converts the OCR models (make setup does it)
#   docker build -f deploy/helm/models.Dockerfile -t plenum/models:0.1.0 models/
#
# The build context is models/ itself (about 65 MiB), not the checkout.
# BASE_IMAGE needs `cp`: the services' base (plenum/debian:bookworm from
# deploy/build-offline.sh) serves without a registry.
ARG BASE_IMAGE=debian:bookworm-slim
FROM ${BASE_IMAGE}
COPY detector/*.toml detector/*.torchscript /models/detector/
COPY ocr/generated/ /models/ocr/generated/
USER 65534:65534
