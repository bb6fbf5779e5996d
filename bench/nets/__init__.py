"""Small plain-torch networks that ship with the project (no torchvision): the digits denoiser and classifier.

    data.py        scikit-learn's 8x8 digits, upsampled to 16x16 in [-1, 1], with the fixed train/held-out split
    unet.py        a small UNet behind EDM's preconditioning (c_skip, c_out, c_in, c_noise)
    classifier.py  a small CNN whose penultimate features define FD-digits
    train.py       the training loops behind `python -m bench train-model`
"""
