# Train rows only (PublicTest never leaves for the GPU search), images as lossless WebP to fit the transfer limit.
import hashlib

import cv2
import numpy as np
d = np.load('.cache/ferplus_cnn/ferplus_48.npz')
tr = d['split'] == 'train'
enc = [cv2.imencode('.webp', im, [cv2.IMWRITE_WEBP_QUALITY, 101])[1].tobytes() for im in d['images'][tr]]
offsets = np.cumsum([0] + [len(e) for e in enc])
np.savez('.gpu/train_pack.npz', blob=np.frombuffer(b''.join(enc), np.uint8), offsets=offsets,
         targets=d['targets'][tr], majority=d['majority'][tr], fer2013=d['fer2013'][tr],
         duplicate=d['duplicate'][tr],
         images_sha=np.frombuffer(hashlib.sha256(d['images'][tr].tobytes()).digest(), np.uint8))
