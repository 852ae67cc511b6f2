"""Methods; every module here registers its classes with ``@register_method``."""

from equimodal.methods.base import Capabilities, Method, MethodConfig, Stage

__all__ = ["Capabilities", "Method", "MethodConfig", "Stage"]
