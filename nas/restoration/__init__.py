"""The restoration toolkit: tasks and degradations, images, paired data, MATLAB bicubic, metrics
(PSNR/SSIM/PSNR-B) and benchmark evaluation. Imports nothing from the NAS layers."""
