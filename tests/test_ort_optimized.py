"""Files made by onnxruntime's own tools, against onnxruntime (marker ``zoo``: run with
``-m zoo``; each builds its tiny random model into ``tmp_path``, nothing is downloaded):

- onnxruntime-genai's model builder (``python -m onnxruntime_genai.models.builder``) on a
  tiny random LLaMA (hidden 64, 2 layers, 4 heads, 2 KV heads, vocab 256), int4 and fp32:
  16 greedy steps with the KV cache fed back give onnxruntime's tokens.
- ``onnxruntime.transformers.optimizer.optimize_model`` on a tiny random BERT.
- A small CNN saved by a session (``optimized_model_filepath``) at ORT_ENABLE_EXTENDED.
"""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import onnx
import onnxruntime as ort
import pytest

import onnx2flax

pytestmark = pytest.mark.zoo
torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def llama_folder(tmp_path_factory):
    """A tiny random LLaMA with a word-level tokenizer, saved as a HuggingFace folder."""
    tokenizers = pytest.importorskip("tokenizers")
    folder = tmp_path_factory.mktemp("llama_hf")
    torch.manual_seed(0)
    config = transformers.LlamaConfig(hidden_size=64, intermediate_size=128,
                                      num_hidden_layers=2, num_attention_heads=4,
                                      num_key_value_heads=2, vocab_size=256,
                                      max_position_embeddings=128)
    transformers.LlamaForCausalLM(config).save_pretrained(folder)
    vocab = {f"t{i}": i for i in range(256)}
    tok = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token="t0"))
    tok.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
    transformers.PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="t1", eos_token="t2",
                                         unk_token="t0").save_pretrained(folder)
    return folder


def _build(folder, out, precision):
    pytest.importorskip("onnxruntime_genai")
    subprocess.run([sys.executable, "-m", "onnxruntime_genai.models.builder", "-i", str(folder),
                    "-o", str(out), "-p", precision, "-e", "cpu", "-c", str(out / "cache")],
                   check=True, capture_output=True)
    return out / "model.onnx"


def _greedy(run, output_names, input_names, steps=16):
    """Tokens and last-position logits of ``steps`` greedy steps from a fixed prompt, each
    step's present cache fed back as the next step's past."""
    ids = np.array([[1, 5, 9, 33, 71]], np.int64)
    past = {n: np.zeros((1, 2, 0, 16), np.float32) for n in input_names
            if n.startswith("past_key_values")}
    tokens, logits = [], []
    for _ in range(steps):
        mask = np.ones((1, ids.shape[1] + next(iter(past.values())).shape[2]), np.int64)
        outs = run({"input_ids": ids, "attention_mask": mask, **past})
        logits.append(np.asarray(outs[0])[0, -1])
        tokens.append(int(logits[-1].argmax()))
        past = {n.replace("present", "past_key_values"): np.asarray(v)
                for n, v in zip(output_names[1:], outs[1:])}
        ids = np.array([[tokens[-1]]], np.int64)
    return tokens, np.stack(logits)


def _without_int8_activations(path):
    """The model with MatMulNBits' ``accuracy_level`` removed: onnxruntime's level 4
    quantizes the activations to int8 too, which the op's definition does not."""
    model = onnx.load(path)
    for node in model.graph.node:
        kept = [a for a in node.attribute if a.name != "accuracy_level"]
        del node.attribute[:]
        node.attribute.extend(kept)
    out = path.with_name("model_exact.onnx")
    onnx.save(model, out, save_as_external_data=True, location="model_exact.onnx.data")
    return out


@pytest.mark.parametrize("precision, exact_tol, builder_tol", [
    ("int4", 1e-4, 2e-2), ("fp32", 1e-4, None)])
def test_genai_llama_greedy_steps(llama_folder, tmp_path, precision, exact_tol, builder_tol):
    """The builder's file as written (tokens equal; int4 logits within ``builder_tol`` of
    their max, the int8 activations of accuracy_level 4), and with exact arithmetic in
    onnxruntime (logits within ``exact_tol``)."""
    path = _build(llama_folder, tmp_path / precision, precision)
    ops = {(n.domain, n.op_type) for n in onnx.load(path, load_external_data=False).graph.node}
    assert ("com.microsoft", "GroupQueryAttention") in ops
    assert (("com.microsoft", "MatMulNBits") in ops) == (precision == "int4")
    converted = onnx2flax.convert(path)
    names = [s.name for s in converted.outputs]
    ours = _greedy(converted.run, names, [s.name for s in converted.inputs])
    paths = [path] + ([_without_int8_activations(path)] if builder_tol else [])
    for p, tol in zip(paths, [builder_tol or exact_tol, exact_tol]):
        session = ort.InferenceSession(str(p), providers=["CPUExecutionProvider"])
        tokens, logits = _greedy(lambda f: session.run(None, f), names,
                                 [i.name for i in session.get_inputs()])
        assert ours[0] == tokens
        np.testing.assert_allclose(ours[1], logits, atol=tol * np.abs(logits).max(), rtol=0)
