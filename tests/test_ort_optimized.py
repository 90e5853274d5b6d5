"""Files made by onnxruntime's own tools, against onnxruntime (marker ``zoo``: run with
``-m zoo``; each builds its tiny random model into ``tmp_path``, nothing is downloaded):

- onnxruntime-genai's model builder (``python -m onnxruntime_genai.models.builder``) on a
  tiny random LLaMA (hidden 64, 2 layers, 4 heads, 2 KV heads, vocab 256), int4 and fp32:
  16 greedy steps with the KV cache fed back give onnxruntime's tokens.
- ``onnxruntime.transformers.optimizer.optimize_model`` on a tiny random BERT and GPT-2.
- The BERT and a small CNN saved by a session (``optimized_model_filepath``): at
  ORT_ENABLE_EXTENDED (FusedMatMul, FusedGemm, FusedConv, ...) and, for the CNN, at
  ORT_ENABLE_ALL (the com.microsoft.nchwc ops).
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


def _export(module, args, path, names, dynamic=None):
    torch.onnx.export(module, args, str(path), input_names=names, dynamo=False,
                      opset_version=17, dynamic_axes=dynamic)
    return path


@pytest.fixture(scope="module")
def bert_file(tmp_path_factory):
    """A tiny random BERT (eager attention: the graph the optimizer's Attention /
    EmbedLayerNormalization fusions recognize; transformers' sdpa export stays unfused),
    exported by torch, and feeds with a padding mask."""
    torch.manual_seed(0)
    config = transformers.BertConfig(attn_implementation="eager", vocab_size=100,
                                     hidden_size=32, num_hidden_layers=2,
                                     num_attention_heads=4, intermediate_size=64,
                                     max_position_embeddings=64)
    bert = transformers.BertModel(config).eval()

    class Outputs(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.bert = bert

        def forward(self, ids, mask, types):
            out = self.bert(input_ids=ids, attention_mask=mask, token_type_ids=types)
            return out.last_hidden_state, out.pooler_output

    ids = torch.randint(0, 100, (2, 8))
    mask = torch.ones(2, 8, dtype=torch.long)
    mask[1, 5:] = 0
    names = ["input_ids", "attention_mask", "token_type_ids"]
    path = _export(Outputs(), (ids, mask, torch.zeros_like(ids)),
                   tmp_path_factory.mktemp("bert") / "bert.onnx", names,
                   {n: {0: "batch", 1: "sequence"} for n in names})
    feeds = {"input_ids": ids.numpy(), "attention_mask": mask.numpy(),
             "token_type_ids": np.zeros((2, 8), np.int64)}
    return path, feeds


def _assert_matches_ort(model, feeds):
    expected = ort.InferenceSession(model.SerializeToString(),
                                    providers=["CPUExecutionProvider"]).run(None, feeds)
    for got, want in zip(onnx2flax.convert(model).run(feeds), expected, strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * np.abs(want).max())


def _contrib_ops(model):
    return {n.op_type for n in model.graph.node if n.domain == "com.microsoft"}


def test_transformers_optimizer_bert(bert_file, tmp_path):
    """``optimize_model(model_type='bert')`` (Attention, EmbedLayerNormalization,
    SkipLayerNormalization, BiasGelu) against onnxruntime on the optimized file."""
    from onnxruntime.transformers.optimizer import optimize_model
    path, feeds = bert_file
    optimize_model(str(path), model_type="bert", num_heads=4,
                   hidden_size=32).save_model_to_file(str(tmp_path / "bert_opt.onnx"))
    model = onnx.load(tmp_path / "bert_opt.onnx")
    assert {"Attention", "EmbedLayerNormalization", "SkipLayerNormalization"} <= \
        _contrib_ops(model)
    _assert_matches_ort(model, feeds)


def test_session_optimized_bert(bert_file, tmp_path):
    """The BERT saved by a session at ORT_ENABLE_EXTENDED (FusedMatMul, FusedGemm,
    BiasGelu)."""
    path, feeds = bert_file
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    options.optimized_model_filepath = str(tmp_path / "bert_session.onnx")
    ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    model = onnx.load(tmp_path / "bert_session.onnx")
    assert {"FusedMatMul", "FusedGemm", "BiasGelu"} <= _contrib_ops(model)
    _assert_matches_ort(model, feeds)


def test_transformers_optimizer_gpt2(tmp_path):
    """A tiny random GPT-2 (no cache) through ``optimize_model(model_type='gpt2')``
    (SkipLayerNormalization, FastGelu), with a padding mask, against onnxruntime."""
    from onnxruntime.transformers.optimizer import optimize_model
    torch.manual_seed(0)
    config = transformers.GPT2Config(attn_implementation="eager", vocab_size=100, n_embd=32,
                                     n_layer=2, n_head=4, n_positions=64, use_cache=False,
                                     bos_token_id=1, eos_token_id=2)
    gpt2 = transformers.GPT2Model(config).eval()

    class Hidden(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.gpt2 = gpt2

        def forward(self, ids, mask):
            return self.gpt2(input_ids=ids, attention_mask=mask, use_cache=False).last_hidden_state

    ids = torch.randint(0, 100, (2, 8))
    mask = torch.ones(2, 8, dtype=torch.long)
    mask[1, 6:] = 0
    names = ["input_ids", "attention_mask"]
    path = _export(Hidden(), (ids, mask), tmp_path / "gpt2.onnx", names,
                   {n: {0: "batch", 1: "sequence"} for n in names})
    optimize_model(str(path), model_type="gpt2", num_heads=4,
                   hidden_size=32).save_model_to_file(str(tmp_path / "gpt2_opt.onnx"))
    model = onnx.load(tmp_path / "gpt2_opt.onnx")
    assert {"SkipLayerNormalization", "FastGelu"} <= _contrib_ops(model)
    _assert_matches_ort(model, {"input_ids": ids.numpy(), "attention_mask": mask.numpy()})


@pytest.mark.parametrize("level", ["ORT_ENABLE_EXTENDED", "ORT_ENABLE_ALL"])
def test_session_optimized_cnn(tmp_path, level):
    """A small CNN saved by a session's ``optimized_model_filepath``: FusedConv at
    EXTENDED, the com.microsoft.nchwc ops at ALL (24 channels, padded to the block, tell
    the file's block size: a file whose channel counts fit blocks 8 and 16 is refused)."""
    torch.manual_seed(0)

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.c1, self.bn = torch.nn.Conv2d(3, 16, 3, padding=1), torch.nn.BatchNorm2d(16)
            self.c2 = torch.nn.Conv2d(16, 24, 3, stride=2, padding=1)
            self.c3 = torch.nn.Conv2d(24, 24, 3, padding=1)
            self.fc = torch.nn.Linear(24, 10)

        def forward(self, x):
            x = torch.nn.functional.max_pool2d(torch.relu(self.bn(self.c1(x))), 2)
            y = torch.relu(self.c2(x))
            y = torch.nn.functional.avg_pool2d(y + torch.sigmoid(self.c3(y)), 2)
            y = torch.nn.functional.interpolate(y, scale_factor=2, mode="nearest")
            return self.fc(torch.nn.functional.adaptive_avg_pool2d(y, 1).flatten(1))

    path = _export(Net().eval(), (torch.randn(1, 3, 32, 32),), tmp_path / "cnn.onnx", ["x"])
    options = ort.SessionOptions()
    options.graph_optimization_level = getattr(ort.GraphOptimizationLevel, level)
    options.optimized_model_filepath = str(tmp_path / "cnn_opt.onnx")
    options.log_severity_level = 3
    ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    domains = {n.domain for n in onnx.load(tmp_path / "cnn_opt.onnx").graph.node}
    assert ("com.microsoft.nchwc" in domains) == (level == "ORT_ENABLE_ALL")
    x = np.random.default_rng(0).standard_normal((1, 3, 32, 32)).astype(np.float32)
    session = ort.InferenceSession(str(tmp_path / "cnn_opt.onnx"),
                                   providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(onnx2flax.convert(tmp_path / "cnn_opt.onnx").run({"x": x})[0],
                               session.run(None, {"x": x})[0], rtol=1e-4, atol=1e-5)
