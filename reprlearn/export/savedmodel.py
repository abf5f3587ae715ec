"""SavedModel for TF Serving: named signatures, preprocessing baked in, no reprlearn needed to load it.

Signatures (every input and output is named):
- `serving_default`: `images` (float32, raw 0-255 pixels) → `embedding`;
- `embed_uint8`: the same for uint8 images;
- `embed_encoded`: `image_bytes` (a string per image: the bytes of a JPEG, PNG, GIF, BMP or WebP file, any size)
  → `embedding`, each decoded and resized as the run's data (`data.resize`) inside the graph, so a client
  can send a photo as it is (with a gallery, `identify_encoded` likewise); EXIF orientation is not applied
  (the graph has no Python to read it: send photos upright);
- two-tower runs: `embed_query`, `embed_query_uint8`, `embed_query_encoded` (the query tower, as the three
  above) and `embed_reference`, `embed_reference_uint8`, `embed_reference_encoded` (the reference tower, each
  file decoded to the reference view's size); `identify` embeds with the query tower, and `distance` and `verify`
  take a query as `images_a` and a reference as `images_b`;
- joint-embedding runs add `embed_head`: `images` → `embedding` from the same tower's own head (for the
  classes it trained on; `serving_default` gives the joint embedding, for the others);
- pair runs add `distance` (`images_a`, `images_b` → `distance`) and `verify`
  (→ `distance`, `match`: distance <= the threshold calibrated in the run report);
- with a gallery, `identify`: `images` → `labels`, `ids`, `distances` (the k nearest enrolled
  items, nearest first), `accepted` (the nearest is within the gallery's rejection threshold)
  and `label` (the nearest item's label, or -1 for unknown). The gallery travels inside the
  SavedModel as variables and is searched with `reprlearn.index`'s own formula, so the answers
  equal `Gallery.identify`;
- autoencoder runs add `encode` (→ `code`, and `indices_i` for a max-unpooling decoder),
  `decode` and `reconstruct`; VAE runs add `encode` (→ `mean`, `logvar`), `decode` (`z`),
  `reconstruct`, `sample` (`num_samples`, `seed`) and `log_likelihood` (`images`, `k`:
  the importance-weighted estimate, nats per image).
"""

from __future__ import annotations

from pathlib import Path

import keras
import tensorflow as tf

from reprlearn.data.decode import DecodeSpec, decode_contents
from reprlearn.index import UNKNOWN, Gallery
from reprlearn.index.search import nearest, prepare_reference
from reprlearn.ops.distances import paired_distance


def _image_spec(tower: keras.Model, name: str, dtype=tf.float32) -> tf.TensorSpec:
    return tf.TensorSpec([None, *tower.input_shape[1:]], dtype, name=name)


def _add_autoencoder_endpoints(archive, autoencoder: keras.Model) -> list[str]:
    """encode / decode / reconstruct for an autoencoder from `conv_autoencoder` or `dense_autoencoder`."""
    image_spec = _image_spec(autoencoder, "images")
    code = autoencoder.get_layer("code").output
    # A max-unpooling decoder also needs the encoder's argmax indices, one tensor per pooling.
    pools = sorted((layer for layer in autoencoder.layers if layer.name.startswith("enc_pool_")), key=lambda l: l.name)
    indices = [layer.output[1] for layer in pools if any(l.name.startswith("dec_unpool_") for l in autoencoder.layers)]
    encoder = keras.Model(autoencoder.input, [code, *indices])
    decoder = keras.Model([code, *indices], autoencoder.output)
    index_names = [f"indices_{i}" for i in range(len(indices))]

    def encode(images):
        outputs = encoder(tf.cast(images, tf.float32))
        return {"code": outputs[0], **dict(zip(index_names, outputs[1:]))} if indices else {"code": outputs}

    def decode(code, *index_tensors):
        return {"reconstruction": decoder([code, *index_tensors] if indices else code)}

    archive.add_endpoint("encode", encode, input_signature=[image_spec])
    archive.add_endpoint("decode", decode, input_signature=[
        tf.TensorSpec(code.shape, tf.float32, name="code"),
        *(tf.TensorSpec(t.shape, tf.int32, name=n) for t, n in zip(indices, index_names))])
    archive.add_endpoint("reconstruct", lambda images: {"reconstruction": autoencoder(tf.cast(images, tf.float32))},
                         input_signature=[image_spec])
    return ["encode", "decode", "reconstruct"]


def _add_vae_endpoints(archive, vae) -> list[str]:
    """encode / decode / reconstruct / sample / log_likelihood for a `VAE`."""
    image_spec = tf.TensorSpec([None, *vae.image_shape], tf.float32, name="images")
    z_spec = tf.TensorSpec([None, vae.latent_dim], tf.float32, name="z")
    count_spec = tf.TensorSpec([], tf.int32, name="num_samples")
    seed_spec = tf.TensorSpec([], tf.int32, name="seed")

    def encode(images):
        mean, logvar = vae.encode(images)
        return {"mean": mean, "logvar": logvar}

    def sample(num_samples, seed):
        z = tf.random.stateless_normal(tf.stack([num_samples, vae.latent_dim]), seed=tf.stack([seed, 0]))
        return {"images": vae.decode(z)}

    def log_likelihood(images, k):
        weights = vae.importance_log_weights(images, k, seed=0)
        return {"log_likelihood": tf.reduce_logsumexp(weights, axis=0) - tf.math.log(tf.cast(k, tf.float32))}

    archive.add_endpoint("encode", encode, input_signature=[image_spec])
    archive.add_endpoint("decode", lambda z: {"images": vae.decode(z)}, input_signature=[z_spec])
    archive.add_endpoint("reconstruct", lambda images: {"reconstruction": vae(images)}, input_signature=[image_spec])
    archive.add_endpoint("sample", sample, input_signature=[count_spec, seed_spec])
    archive.add_endpoint("log_likelihood", log_likelihood,
                         input_signature=[image_spec, tf.TensorSpec([], tf.int32, name="k")])
    return ["encode", "decode", "reconstruct", "sample", "log_likelihood"]


class _GalleryState(tf.Module):
    """A gallery as SavedModel variables: searched reference rows, their squared norms, labels and ids."""

    def __init__(self, gallery: Gallery):
        super().__init__(name="gallery")
        reference, squared_norms = prepare_reference(gallery.embeddings, gallery.metric)
        self.reference = tf.Variable(reference, trainable=False)
        self.squared_norms = tf.Variable(squared_norms, trainable=False)
        self.labels = tf.Variable(gallery.labels, trainable=False)
        self.ids = tf.Variable(gallery.ids.astype(object).astype(bytes), trainable=False, dtype=tf.string)


def _add_identify_endpoint(archive, embed, image_spec: tf.TensorSpec, gallery: Gallery, k: int):
    state = _GalleryState(gallery)
    archive.track(state)
    k, threshold = min(k, len(gallery)), tf.constant(gallery.threshold, tf.float32)

    def identify(images):
        distances, indices = nearest(embed(images)["embedding"], state.reference, state.squared_norms, k,
                                     gallery.metric)
        labels = tf.gather(state.labels, indices)
        accepted = distances[:, 0] <= threshold
        return {"labels": labels, "ids": tf.gather(state.ids, indices), "distances": distances,
                "accepted": accepted, "label": tf.where(accepted, labels[:, 0], tf.constant(UNKNOWN, tf.int64))}

    archive.add_endpoint("identify", identify, input_signature=[image_spec])
    return identify


def _add_embedding_endpoints(archive, tower: keras.Model, resize: str, names: tuple[str, str, str]):
    """`names` = (float pixels, uint8 pixels, encoded bytes) endpoints embedding with `tower`; returns
    `(embed, decoded)`: images → {"embedding"}, and image bytes → the tower's input."""
    archive.track(tower)

    def embed(images):
        return {"embedding": tower(tf.cast(images, tf.float32), training=False)}

    archive.add_endpoint(names[0], embed, input_signature=[_image_spec(tower, "images")])
    archive.add_endpoint(names[1], embed, input_signature=[_image_spec(tower, "images", tf.uint8)])
    height, width, channels = (int(v) for v in tower.input_shape[1:])
    spec = DecodeSpec((height, width), channels, resize)

    def decoded(image_bytes):
        return tf.map_fn(lambda contents: decode_contents(contents, spec, pillow=False), image_bytes,
                         fn_output_signature=tf.TensorSpec([height, width, channels], tf.float32))

    archive.add_endpoint(names[2], lambda image_bytes: embed(decoded(image_bytes)),
                         input_signature=[tf.TensorSpec([None], tf.string, name="image_bytes")])
    return embed, decoded


def write_saved_model(tower: keras.Model, path: Path, metric: str = "L2", threshold: float | None = None,
                      generative: keras.Model | None = None, gallery: Gallery | None = None,
                      identify_k: int = 5, resize: str = "pad", head: keras.Model | None = None,
                      reference: keras.Model | None = None) -> list[str]:
    """Writes `tower` as a SavedModel at `path`; returns the signature names.

    Args:
        tower: the embedding model (raw pixels in, embedding out; an autoencoder's encoder; a two-tower run's
            query tower).
        path: the version folder to write (must not exist).
        metric: the distance of the `distance` and `verify` signatures.
        threshold: the calibrated match threshold; None leaves out `distance` and `verify`.
        generative: an autoencoder or `VAE` whose encode/decode/reconstruct (and for a VAE sample and
            log_likelihood) signatures to add.
        gallery: a gallery enrolled by `tower` (two towers: by `reference`), with a rejection threshold: adds
            `identify`.
        identify_k: the matches `identify` returns per image (at most the gallery's size).
        resize: how `embed_encoded` fits a file of another size to the tower's input (`data.resize`).
        head: a joint embedding's tower ending in its own head (`head.keras`): adds `embed_head`.
        reference: a two-tower run's reference tower: `embed_query*` (= `serving_default`, `embed_uint8`,
            `embed_encoded`) and `embed_reference*` signatures; `distance` and `verify` take a query as `images_a`
            and a reference as `images_b`.
    """
    from reprlearn.models import VAE

    archive = keras.export.ExportArchive()
    embed, decoded = _add_embedding_endpoints(archive, tower, resize,
                                              ("serving_default", "embed_uint8", "embed_encoded"))
    names = ["serving_default", "embed_uint8", "embed_encoded"]
    embed_b = embed
    if reference is not None:
        views = ("embed_query", "embed_query_uint8", "embed_query_encoded")
        _add_embedding_endpoints(archive, tower, resize, views)
        sides = ("embed_reference", "embed_reference_uint8", "embed_reference_encoded")
        embed_b, _ = _add_embedding_endpoints(archive, reference, resize, sides)
        names += [*views, *sides]
    if threshold is not None:
        pair_spec = [_image_spec(tower, "images_a"), _image_spec(reference or tower, "images_b")]

        def distance(images_a, images_b):
            return {"distance": paired_distance(embed(images_a)["embedding"], embed_b(images_b)["embedding"],
                                                metric)}

        def verify(images_a, images_b):
            d = distance(images_a, images_b)["distance"]
            return {"distance": d, "match": d <= tf.constant(threshold, tf.float32)}

        archive.add_endpoint("distance", distance, input_signature=pair_spec)
        archive.add_endpoint("verify", verify, input_signature=pair_spec)
        names += ["distance", "verify"]
    if gallery is not None:
        identify = _add_identify_endpoint(archive, embed, _image_spec(tower, "images"), gallery, identify_k)
        archive.add_endpoint("identify_encoded", lambda image_bytes: identify(decoded(image_bytes)),
                             input_signature=[tf.TensorSpec([None], tf.string, name="image_bytes")])
        names += ["identify", "identify_encoded"]
    if head is not None:
        archive.track(head)
        archive.add_endpoint("embed_head", lambda images: {"embedding": head(tf.cast(images, tf.float32),
                                                                            training=False)},
                             input_signature=[_image_spec(head, "images")])
        names.append("embed_head")
    if generative is not None:
        archive.track(generative)
        names += (_add_vae_endpoints(archive, generative) if isinstance(generative, VAE)
                  else _add_autoencoder_endpoints(archive, generative))
    archive.write_out(str(path), verbose=False)
    return names
