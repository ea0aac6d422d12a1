"""Files shipped inside a Hugging Face export of an LFA model (loaded with trust_remote_code=True).

They import only torch and transformers (>= 5): an export folder works without flopwise installed."""
