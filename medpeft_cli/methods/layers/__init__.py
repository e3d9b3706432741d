"""The torch modules some methods add to a backbone. Method modules import these inside their functions,
so that registering a method never imports torch."""
