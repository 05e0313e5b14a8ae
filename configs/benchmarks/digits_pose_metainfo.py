# Dataset metainfo of the digits stick-figure keypoint set (tools/benchmarks/make_digits.py):
# 13 joints of a figure drawn from real handwritten '1' strokes (limbs, torso) and a '0' (head).
# Figures face the viewer, so the figure's left joints lie on the image's right, as in COCO;
# `swap` gives the flip pairs. Sigmas (OKS falloff per joint) are COCO's for the same body
# joints; the head point is the centre of a drawn circle, sharper than COCO's face points
# and blurrier than nothing, so it gets 0.05.
dataset_info = dict(
    dataset_name='digits_figures',
    paper_info=dict(
        author='dfbf_mm', title='Stick figures drawn from scikit-learn handwritten digits',
        container='tools/benchmarks/make_digits.py', year='2026',
        homepage='https://scikit-learn.org/stable/datasets/toy_dataset.html#digits-dataset'),
    keypoint_info={
        0: dict(name='head', id=0, color=[51, 153, 255], type='upper', swap=''),
        1: dict(name='left_shoulder', id=1, color=[0, 255, 0], type='upper',
                swap='right_shoulder'),
        2: dict(name='right_shoulder', id=2, color=[255, 128, 0], type='upper',
                swap='left_shoulder'),
        3: dict(name='left_elbow', id=3, color=[0, 255, 0], type='upper', swap='right_elbow'),
        4: dict(name='right_elbow', id=4, color=[255, 128, 0], type='upper', swap='left_elbow'),
        5: dict(name='left_wrist', id=5, color=[0, 255, 0], type='upper', swap='right_wrist'),
        6: dict(name='right_wrist', id=6, color=[255, 128, 0], type='upper', swap='left_wrist'),
        7: dict(name='left_hip', id=7, color=[0, 255, 0], type='lower', swap='right_hip'),
        8: dict(name='right_hip', id=8, color=[255, 128, 0], type='lower', swap='left_hip'),
        9: dict(name='left_knee', id=9, color=[0, 255, 0], type='lower', swap='right_knee'),
        10: dict(name='right_knee', id=10, color=[255, 128, 0], type='lower', swap='left_knee'),
        11: dict(name='left_ankle', id=11, color=[0, 255, 0], type='lower', swap='right_ankle'),
        12: dict(name='right_ankle', id=12, color=[255, 128, 0], type='lower',
                 swap='left_ankle'),
    },
    skeleton_info={
        0: dict(link=('left_shoulder', 'left_elbow'), id=0, color=[0, 255, 0]),
        1: dict(link=('left_elbow', 'left_wrist'), id=1, color=[0, 255, 0]),
        2: dict(link=('right_shoulder', 'right_elbow'), id=2, color=[255, 128, 0]),
        3: dict(link=('right_elbow', 'right_wrist'), id=3, color=[255, 128, 0]),
        4: dict(link=('left_hip', 'left_knee'), id=4, color=[0, 255, 0]),
        5: dict(link=('left_knee', 'left_ankle'), id=5, color=[0, 255, 0]),
        6: dict(link=('right_hip', 'right_knee'), id=6, color=[255, 128, 0]),
        7: dict(link=('right_knee', 'right_ankle'), id=7, color=[255, 128, 0]),
        8: dict(link=('left_shoulder', 'right_shoulder'), id=8, color=[51, 153, 255]),
        9: dict(link=('left_hip', 'right_hip'), id=9, color=[51, 153, 255]),
        10: dict(link=('left_shoulder', 'left_hip'), id=10, color=[51, 153, 255]),
        11: dict(link=('right_shoulder', 'right_hip'), id=11, color=[51, 153, 255]),
    },
    joint_weights=[1.0] * 13,
    sigmas=[0.05, 0.079, 0.079, 0.072, 0.072, 0.062, 0.062, 0.107, 0.107, 0.087, 0.087,
            0.089, 0.089])
