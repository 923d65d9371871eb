"""`mini`: the 64 px model trained here, and the procedural world it was trained on.

- ``world``: flat-colour characters drawn from a Pose and attributes (the training data);
- ``measure``: where the hair, cape and figure are in such a picture, and their colours;
- ``architecture``: mini's SD 1.x-class parts, sized for a CPU;
- ``train``: the recipe that rebuilds its weights (``python -m charstudio.mini.train``), with
  ``dataset`` (its pictures, strokes and figure weights), ``schedule`` (learning rate, noise
  shift, loss weights) and ``export`` (the diffusers folder it writes);
- ``evaluate``: the behaviour scores (``python -m charstudio.mini.evaluate``).

The weights themselves ship in ``charstudio/data/mini`` and load like any diffusers folder
through the ``mini`` preset.
"""
