"""(placeholder: filled in by its family's work)"""
__all__: list[str] = []
