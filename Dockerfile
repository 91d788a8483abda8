# weaving on a CUDA machine:
#   docker build -t weaving .
#   docker run --gpus all -v $PWD/data:/workspace/data -v $PWD/checkpoints:/workspace/checkpoints \
#       weaving fit --config /opt/weaving/configs/finetune/vit_b32_mnist.yaml
# The base image already has torch and torchvision with CUDA; pip keeps them and adds the rest.
FROM pytorch/pytorch:2.5.1-cuda12.4-cudnn9-runtime

WORKDIR /opt/weaving
COPY pyproject.toml README.md ./
COPY weaving ./weaving
COPY configs ./configs
RUN pip install --no-cache-dir . && weaving --help

WORKDIR /workspace
ENTRYPOINT ["weaving"]
CMD ["--help"]
