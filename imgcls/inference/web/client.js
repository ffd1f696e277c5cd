// Classify an image in the browser with an imgcls model exported --with-preprocessing.
import * as ort from "./ort.wasm.min.mjs"; // onnxruntime-web's dist/, with its .wasm beside it

const metadata = await (await fetch("metadata.json")).json();
const classes = JSON.parse(metadata.classes);
const grey = metadata.input_layout.includes("grey");
const session = await ort.InferenceSession.create("model.onnx", { executionProviders: ["wasm"] });

// image: a decoded <img> or ImageBitmap; the browser has already applied its EXIF orientation.
export async function classify(image) {
  const width = image.naturalWidth ?? image.width;
  const height = image.naturalHeight ?? image.height;
  const context = new OffscreenCanvas(width, height).getContext("2d");
  context.fillStyle = "white"; // transparency over white, as imgcls does
  context.fillRect(0, 0, width, height);
  context.drawImage(image, 0, 0);
  const rgba = context.getImageData(0, 0, width, height).data;
  const channels = grey ? 1 : 3;
  const pixels = new Uint8Array(width * height * channels);
  for (let i = 0, j = 0; i < rgba.length; i += 4) {
    if (grey) {
      pixels[j++] = Math.round(0.299 * rgba[i] + 0.587 * rgba[i + 1] + 0.114 * rgba[i + 2]);
    } else {
      pixels[j++] = rgba[i];
      pixels[j++] = rgba[i + 1];
      pixels[j++] = rgba[i + 2];
    }
  }
  const input = new ort.Tensor("uint8", pixels, [1, height, width, channels]);
  const { probabilities } = await session.run({ pixels: input });
  const scores = Array.from(probabilities.data);
  const best = scores.indexOf(Math.max(...scores));
  return { label: classes[best], score: scores[best], scores };
}
