"""Detection: data (COCO JSON, YOLO txt) in one in-memory form, the letterbox, the built-in
Fashion-MNIST detection example, mAP by pycocotools, and a YOLOv8-style detector
(:mod:`~edgecompress.detect.model`) with its loss and training loop, and Ultralytics YOLOv8
checkpoints converted to it (:mod:`~edgecompress.detect.ultralytics`). The box decoding and
NMS that run on the board are in :mod:`edgecompress.runtime.detect_post`."""
