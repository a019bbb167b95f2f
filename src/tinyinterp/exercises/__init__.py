"""Exercise definitions, one module per part of the book. Importing a module registers its exercises."""
