from setuptools import find_packages, setup

setup(
    name="losswidget",
    version="0.1.0",
    description="Layer-by-layer pruning sensitivity (loss profiles) of ONNX models, in Jupyter",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    packages=find_packages(include=["losswidget", "losswidget.*"]) + ["losswidget.js"],
    package_dir={"losswidget.js": "js"},                 # the front end lives in js/ at the top level
    package_data={"losswidget.js": ["*.js", "*.css"], "losswidget.demo": ["*.onnx", "*.npz"],
                  "losswidget": ["app_template/voila/templates/losswidget/*"]},
    python_requires=">=3.10",
    install_requires=["numpy>=1.24", "onnx>=1.15", "blake3>=0.3", "onnxruntime>=1.16", "traitlets>=5",
                      "ipywidgets>=8", "bqplot>=0.12.40", "anywidget>=0.9", "sidecar>=0.7"],
    extras_require={
        "dask": ["distributed>=2023.1"],
        "fast": ["numba>=0.59"],                         # the compiled magnitude kernel (analysis/ranks.py)
        "test": ["pytest>=7", "pandas>=1.5", "distributed>=2023.1", "onnx_ir>=0.1", "nbclient>=0.7", "nbformat>=5", "ipykernel>=6",
                 "jupyterlab>=4", "notebook>=7", "voila>=0.5", "playwright>=1.40", "numba>=0.59"],
        "pandas": ["pandas>=1.5"],
        # retraining the demo models (scripts/train_demo.py); the exact torch the bundled model was made with
        "train": ["scikit-learn>=1.3", "torch==2.13.0"],
        "app": ["voila>=0.5", "ipykernel>=6"],   # Voilà runs the page in a kernel; it does not bring one
    },
    entry_points={"console_scripts": ["losswidget=losswidget.cli:main"]},
)
