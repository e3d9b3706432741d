"""Classification methods: one module per method family; every module here is imported by methods/catalog.py.
A method module imports torch, timm and peft only inside its functions (the registry stays torch-free)."""
