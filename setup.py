"""dfbf_mm: data-free pruning and fine-tuning for OpenMMLab models (DFBF, LOP, Paoding).

``pip install .`` (or ``-e .``) into an existing OpenMMLab environment leaves its torch,
torchvision, mmcv and numpy as they are: torch, torchvision and mmcv (a build matching the
environment's CUDA) are not requirements here, ``import dfbf_mm`` checks them and names the fix
in one line (dfbf_mm/compat.py). Tested: torch 2.1 and 2.14, numpy 1.24 and 1.26, mmcv 2.1.0
(docs/install.md). tools/setup_env.sh installs the whole pinned stack instead.
"""
import os

from setuptools import find_packages, setup

# every third-party package dfbf_mm imports when imported (checked by tests/test_install.py)
INSTALL_REQUIRES = [
    'numpy<2',  # mmcv 2.1.0 and mmdet 3.3 are built against numpy 1
    'mmengine>=0.10.7,<0.11',
    # pruning/target.py and export/profile.py use its private op counter (torch_pruning.utils.op_counter)
    'torch-pruning>=1.6.1,<1.7',
    'tqdm',
    'opencv-python',  # synthesis/image_io.py (mmengine requires it too)
]
EXTRAS_REQUIRE = {
    # tools/prune.py --onnx, ExportHook(onnx=True): the last releases that take numpy 1
    'onnx': ['onnx>=1.15,<1.18', 'onnxruntime>=1.16,<1.21'],
    # tools/prune.py's group plot, tools/benchmarks (the digits data come from scikit-learn)
    'benchmarks': ['matplotlib', 'scikit-learn'],
    'tests': ['pytest', 'matplotlib', 'scikit-learn'],
}

setup(
    name='dfbf_mm',
    version='0.1.0',
    description='Data-free backbone pruning and fine-tuning for mmdet / mmpose / mmpretrain',
    long_description=open('README.md').read() if os.path.exists('README.md') else '',
    long_description_content_type='text/markdown',
    packages=find_packages(include=['dfbf_mm', 'dfbf_mm.*']),
    python_requires='>=3.10',
    install_requires=INSTALL_REQUIRES,
    extras_require=EXTRAS_REQUIRE,
)
