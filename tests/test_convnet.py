"""The ``convnet4`` encoder: PMR's CG-MNIST convnet, layer by layer, and usable by methods."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from equimodal.config import ModelConfig, TrainConfig
from equimodal.engine import Trainer
from equimodal.models.convnet import ConvNet4Encoder, convnet_image_shape
from equimodal.registry import ENCODERS, create_method, load_dataset


def _reference(enc: ConvNet4Encoder, img: Tensor) -> Tensor:
    """PMR's ``convnet.forward`` written out with the encoder's own weights."""
    bn, c1, _, _, c2, _, c3, _, c4, _ = enc.trunk
    x = F.batch_norm(img, bn.running_mean, bn.running_var, bn.weight, bn.bias, False)
    x = F.max_pool2d(F.relu(c1(x)), kernel_size=3, stride=2, padding=1)  # 28 -> 14
    x = F.relu(c4(F.relu(c3(F.relu(c2(x))))))  # 14 -> 7
    x = F.avg_pool2d(x, 7, stride=1).flatten(1)  # the reference's AvgPool2d(7)
    return enc.fc(x)


def test_layers_parameter_count_and_output_shape() -> None:
    assert "convnet4" in ENCODERS.names()
    color, gray = ConvNet4Encoder(3 * 784, 512), ConvNet4Encoder(784, 512)
    assert color.image_shape == (3, 28, 28) and gray.image_shape == (1, 28, 28)
    # BN(3) 6 + conv5x5 2,432 + conv3x3 9,248 + 18,496 + 36,928 + fc 33,280
    assert sum(p.numel() for p in color.parameters()) == 100_390
    assert sum(p.numel() for p in gray.parameters()) == 98_786
    convs = [m for m in color.trunk if isinstance(m, nn.Conv2d)]
    assert [(m.in_channels, m.out_channels, m.kernel_size[0], m.stride[0], m.padding[0])
            for m in convs] == [(3, 32, 5, 1, 2), (32, 32, 3, 1, 1), (32, 64, 3, 2, 1),
                                (64, 64, 3, 1, 1)]
    assert isinstance(color.trunk[0], nn.BatchNorm2d) and color.fc.in_features == 64
    torch.manual_seed(0)
    x = torch.randn(5, 3 * 784)
    color.eval()
    out = color(x)
    assert out.shape == (5, 512)
    torch.testing.assert_close(out, _reference(color, x.view(5, 3, 28, 28)))


def test_reference_weight_init() -> None:
    torch.manual_seed(0)
    enc = ConvNet4Encoder(784, 512)  # init="pmr": PMR's utils.weight_init
    conv4 = enc.trunk[8]
    fan_out = 64 * 9
    assert abs(float(conv4.weight.detach().std()) - (2 / fan_out) ** 0.5) < 0.005
    assert abs(float(enc.fc.weight.detach().std()) - (2 / (64 + 512)) ** 0.5) < 0.005
    assert float(enc.fc.bias.detach().abs().max()) == 0.0
    plain = ConvNet4Encoder(784, 512, init="torch")  # kaiming_uniform(a=sqrt(5)): 2.4x smaller
    assert float(plain.trunk[8].weight.detach().std()) < 0.5 * float(conv4.weight.detach().std())
    with pytest.raises(ValueError, match="init"):
        ConvNet4Encoder(784, 8, init="xavier")


def test_channels_last_sequences_and_shape_errors() -> None:
    torch.manual_seed(0)
    a = ConvNet4Encoder(784, 16).eval()
    b = ConvNet4Encoder(784, 16, channels_last=True).eval()
    b.load_state_dict(a.state_dict())
    x = torch.randn(4, 784)
    torch.testing.assert_close(a(x), b(x), atol=1e-5, rtol=1e-4)
    seq = torch.stack([x, torch.randn(4, 784)], 1)  # [B, T=2, D]; sample 0 has one frame
    pooled = a(seq, torch.tensor([1, 2, 2, 2]))
    torch.testing.assert_close(pooled[0], a(x[:1])[0], atol=1e-5, rtol=1e-4)
    assert convnet_image_shape(192) == (3, 8, 8) and convnet_image_shape(64) == (1, 8, 8)
    with pytest.raises(ValueError, match="perfect square"):
        ConvNet4Encoder(50, 8)
    with pytest.raises(ValueError, match="8x8"):
        ConvNet4Encoder(16, 8)
    with pytest.raises(ValueError, match="D=784"):
        a(torch.randn(2, 783))


def test_methods_train_with_convnet4_encoders() -> None:
    data = load_dataset("cgdigits", n_train=64, n_valid=32, n_test=32, seed=0)
    mcfg = ModelConfig(encoders={m: "convnet4" for m in data.info.modality_names},
                       hidden=16, fusion="sum")
    train = TrainConfig(epochs=2, batch_size=32, lr=0.01, optimizer="sgd", progress=False,
                        device="cpu", scheduler="step", step_size=1, gamma=0.1)
    torch.manual_seed(0)
    method = create_method("sum", data.info, mcfg)
    encs = method.model.encoders if hasattr(method, "model") else None
    before = {k: v.clone() for k, v in method.state_dict().items()}
    result = Trainer(method, data, train).fit()
    assert encs is None or all(isinstance(e, ConvNet4Encoder) for e in encs.values())
    # StepLR (step_size 1, gamma 0.1); the history logs the rate after each epoch's step
    assert [round(h["lr"], 6) for h in result.history] == [0.001, 0.0001]
    changed = [k for k, v in method.state_dict().items() if not torch.equal(v, before[k])]
    assert any("trunk" in k for k in changed)


@pytest.mark.parametrize("method_name", ["ogm_ge", "opm"])
def test_gradient_modulation_conv_filter_selects_the_conv_kernels(method_name: str) -> None:
    """``param_filter="conv"`` = the OGM-GE reference's ``len(grad.size()) == 4``: conv
    kernels only; ``weights`` adds the encoder's fc weight; ``all`` also BN and biases."""
    data = load_dataset("cgdigits", n_train=32, n_valid=16, n_test=16, seed=0)
    mcfg = ModelConfig(encoders={m: "convnet4" for m in data.info.modality_names},
                       hidden=16, fusion="sum")
    sizes = {}
    for f in ("all", "weights", "conv"):
        method = create_method(method_name, data.info, mcfg, param_filter=f)
        params = method.encoder_params("gray")
        sizes[f] = sorted(p.dim() for p in params)
        enc = method.model.encoders["gray"]
        assert {id(p) for p in params} <= {id(p) for p in enc.parameters()}
    assert sizes["conv"] == [4, 4, 4, 4]  # PMR's convnet: four conv layers
    assert sizes["weights"] == [2, 4, 4, 4, 4]  # + the fc 64 -> hidden
    assert len(sizes["all"]) > len(sizes["weights"]) and 1 in sizes["all"]
    with pytest.raises(ValueError, match="param_filter"):
        create_method(method_name, data.info, mcfg, param_filter="kernels")
