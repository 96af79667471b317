"""Shape and type manipulation ops (filled in by the tensor-ops work)."""
