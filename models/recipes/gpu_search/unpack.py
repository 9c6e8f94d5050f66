import numpy as np, cv2, hashlib, os
p = np.load('.gpu/train_pack.npz')
blob, off = p['blob'], p['offsets']
imgs = np.stack([cv2.imdecode(blob[off[i]:off[i + 1]], cv2.IMREAD_GRAYSCALE) for i in range(len(off) - 1)])
assert hashlib.sha256(imgs.tobytes()).digest() == p['images_sha'].tobytes(), "decoded images differ"
os.makedirs('.cache/ferplus_cnn', exist_ok=True)
n = len(imgs)
np.savez('.cache/ferplus_cnn/ferplus_48.npz', images=imgs, targets=p['targets'], majority=p['majority'],
         fer2013=p['fer2013'], split=np.array(['train'] * n), duplicate=p['duplicate'], path=np.array([''] * n))
print('unpacked', n, 'faces, pixels verified')
