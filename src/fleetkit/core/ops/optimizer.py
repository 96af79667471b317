"""(placeholder: optimizer update kernels, filled in by the optimizer work)"""
