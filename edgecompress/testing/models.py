"""The reference models under the name ``--arch`` strings, recipes and reports use
(``edgecompress.testing.models:digits_resnet``); they live in :mod:`edgecompress.models`,
below everything that builds them."""

from __future__ import annotations

from edgecompress.models import BasicBlock as BasicBlock
from edgecompress.models import DigitsResNet as DigitsResNet
from edgecompress.models import Inception as Inception
from edgecompress.models import digits_resnet as digits_resnet
from edgecompress.models import inception_digits as inception_digits
from edgecompress.models import small_mobilenet_v2 as small_mobilenet_v2
from edgecompress.models import tiny_cnn as tiny_cnn
from edgecompress.models import tiny_swin as tiny_swin
from edgecompress.models import tiny_vit as tiny_vit
from edgecompress.models import vgg_digits as vgg_digits
