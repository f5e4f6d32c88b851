"""Data sets: from any known layout to the one prepared layout, and reading it back.

:mod:`.layouts` recognises source layouts and pairs images with masks;
:mod:`.masks` is how a mask is read (values to foreground or classes, connected
components); :mod:`.prepare` is ``unet prepare`` and ``unet check`` (summary:
:mod:`.report`); :mod:`.dataset_json` is the one reader of ``dataset.json``;
:mod:`.pairs` gives training and evaluation the pairs and split of a folder;
:mod:`.checks` warns about masks that lead to all-black predictions.
"""
