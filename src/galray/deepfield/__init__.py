"""The deep-field generator as a product: intensity scaling, the saved model, tiled generation."""
