"""kandinsky: Kandinsky 2.1 inpainting on MindSpore, from the command line."""

__version__ = "0.1.0"
TOOL_NAME = "kandinsky"
