"""Image data for training and scoring: the synthetic micrograph generator (`synth`),
labelled image/mask pairs and their conventions (`labelled`), the Review page's labelled
set (`labelled_set`) and the segmentation scores shared by evaluate, train and quantize."""
