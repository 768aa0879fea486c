"""Neural modules: ECAPA-TDNN, pooling, masked BatchNorm, classifiers, fusion, text encoder."""
