"""Files in and out: images by content (:mod:`.images`), atomic writes (:mod:`.atomic`),
run folders (:mod:`.runs`) and the progress bar (:mod:`.progress`)."""
