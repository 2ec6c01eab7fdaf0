"""Configuration: option dataclasses (the recipe schema), recipes, and loading a recipe with its plugins."""
