"""dfbf_mm: data-free pruning and fine-tuning for OpenMMLab models (DFBF, LOP, Paoding)."""
from setuptools import find_packages, setup

setup(
    name='dfbf_mm',
    version='0.1.0',
    description='Data-free backbone pruning and fine-tuning for mmdet / mmpose / mmpretrain',
    long_description=open('README.md').read() if __import__('os').path.exists('README.md') else '',
    long_description_content_type='text/markdown',
    packages=find_packages(include=['dfbf_mm', 'dfbf_mm.*']),
    python_requires='>=3.10',
    # The pinned stack (torch, mmcv with ops, mm* packages) is installed by tools/setup_env.sh;
    # mmcv 2.1.0 has no wheel for torch 2.14, so it cannot be an ordinary requirement here.
    install_requires=['mmengine>=0.10.7', 'torch-pruning>=1.6.1', 'numpy<2'],
)
