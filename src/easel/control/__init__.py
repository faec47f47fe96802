"""ControlNet support outside the families: control images (loading, sizing, preprocessing).

The request's ControlUnits name a control model and an image; this package turns each image
into the conditioning image the pipeline gets (models/control.py loads the control models,
each family says which pipeline classes take them). Nothing here imports torch or diffusers
at import time.
"""
