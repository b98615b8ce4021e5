"""Detection: data (COCO JSON, YOLO txt) in one in-memory form, the letterbox, the built-in
Fashion-MNIST detection example, and mAP by pycocotools. The box decoding and NMS that run
on the board are in :mod:`edgecompress.runtime.detect_post`."""
