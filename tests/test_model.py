import pytest
import torch

from pipeline.model import CRNN, ModelConfig, normalize_contrast
from pipeline.params import ParamsError, parse_params
from tests.conftest import project_params_dict


def _config(architecture, shortcut=True, pool="max", classes=10, norm="none") -> ModelConfig:
    return ModelConfig(
        architecture=architecture,
        column_pool=pool,
        shortcut=shortcut,
        input_norm=norm,
        num_classes=classes,
    )


@pytest.mark.parametrize("preset", ["cpu", "reference"])
def test_output_length_follows_width(preset):
    params = parse_params(project_params_dict())
    architecture = params.model.presets[preset]
    model = CRNN(_config(architecture)).eval()
    widths = [1, 7, 33, 100, 257] if preset == "cpu" else [9, 100, 333]
    with torch.no_grad():
        for width in widths:
            log_probs, shortcut = model(torch.zeros(2, 1, architecture.height, width))
            assert log_probs.shape == (model.output_lengths(torch.tensor([width])).item(), 2, 10)
            assert shortcut.shape == log_probs.shape
    lengths = model.output_lengths(torch.tensor([200, 400, 800]))
    assert lengths[1] > lengths[0] and lengths[2] > lengths[1]  # no fixed frame count


def test_cpu_default_gives_two_px_per_frame():
    architecture = parse_params(project_params_dict()).model.presets["cpu"]
    assert CRNN(_config(architecture)).output_lengths(torch.tensor([200])).item() == 100


def test_log_probs_are_normalized_and_time_major(tiny_params):
    model = CRNN(_config(tiny_params.model.architecture, classes=7)).eval()
    with torch.no_grad():
        log_probs, _ = model(torch.rand(3, 1, 32, 64))
    assert log_probs.shape[1:] == (3, 7)  # (T, B, K)
    assert torch.allclose(log_probs.exp().sum(-1), torch.ones(log_probs.shape[:2]), atol=1e-5)


def test_log_probs_stay_fp32_under_cpu_bf16_autocast(tiny_params):
    # CPU autocast runs the convolutions, BiLSTM and linear layers in bf16 and leaves
    # log_softmax in the dtype it gets: the CTC loss and the decoders would read bf16
    model = CRNN(_config(tiny_params.model.architecture, classes=7)).eval()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        log_probs, shortcut = model(torch.rand(3, 1, 32, 64))
    assert log_probs.dtype == shortcut.dtype == torch.float32
    assert torch.allclose(log_probs.exp().sum(-1), torch.ones(log_probs.shape[:2]), atol=1e-5)


def test_shortcut_can_be_switched_off(tiny_params):
    on = CRNN(_config(tiny_params.model.architecture, shortcut=True))
    off = CRNN(_config(tiny_params.model.architecture, shortcut=False))
    assert off.shortcut is None
    assert off(torch.rand(1, 1, 32, 40))[1] is None
    extra = sum(p.numel() for p in on.parameters()) - sum(p.numel() for p in off.parameters())
    assert extra == sum(p.numel() for p in on.shortcut.parameters()) > 0


def test_avg_and_max_column_pooling_differ(tiny_params):
    torch.manual_seed(0)
    model = CRNN(_config(tiny_params.model.architecture, pool="max")).eval()
    avg = CRNN(_config(tiny_params.model.architecture, pool="avg")).eval()
    avg.load_state_dict(model.state_dict())
    images = torch.rand(1, 1, 32, 40)
    with torch.no_grad():
        assert not torch.allclose(model(images)[0], avg(images)[0])


def test_extend_classes_keeps_old_rows(tiny_params):
    model = CRNN(_config(tiny_params.model.architecture, classes=5))
    old_weight = model.classifier.weight.detach().clone()
    old_shortcut = model.shortcut.weight.detach().clone()
    model.extend_classes(8)
    assert model.config.num_classes == 8 and model.classifier.out_features == 8
    assert torch.equal(model.classifier.weight[:5], old_weight)
    assert torch.equal(model.shortcut.weight[:5], old_shortcut)
    assert model(torch.rand(1, 1, 32, 40))[0].shape[-1] == 8
    with pytest.raises(ValueError, match="cannot shrink"):
        model.extend_classes(4)


def test_config_round_trips_through_plain_dicts(tiny_params):
    config = _config(tiny_params.model.architecture)
    assert ModelConfig.from_dict(config.to_dict()) == config
    assert isinstance(config.to_dict()["architecture"]["widths"], list)


def test_a_height_the_encoder_cannot_reduce_is_rejected():
    mapping = project_params_dict()
    mapping["model"]["presets"]["reference"]["height"] = 16
    with pytest.raises(
        ParamsError, match=r"model\.presets\.\*\.height: 16 px cannot be reduced 32x"
    ):
        parse_params(mapping)


def test_unknown_preset_is_rejected():
    mapping = project_params_dict()
    mapping["model"]["preset"] = "huge"
    with pytest.raises(
        ParamsError,
        match=r"model\.preset: 'huge' is not one of model\.presets \(cpu, cpu64, reference\)",
    ):
        parse_params(mapping)


def test_architecture_lists_must_match_in_length():
    mapping = project_params_dict()
    mapping["model"]["presets"]["cpu"]["blocks"] = [1, 1]
    with pytest.raises(ParamsError, match="blocks: needs one entry per stage"):
        parse_params(mapping)


def test_a_line_reads_the_same_alone_or_in_a_padded_batch(tiny_params):
    torch.manual_seed(0)
    model = CRNN(_config(tiny_params.model.architecture)).eval()
    short, long = torch.rand(1, 1, 32, 40), torch.rand(1, 1, 32, 120)
    batch = torch.zeros(2, 1, 32, 120)
    batch[0, :, :, :40], batch[1] = short[0], long[0]
    with torch.no_grad():
        alone, _ = model(short, torch.tensor([40]))
        together, _ = model(batch, torch.tensor([40, 120]))
        unaware, _ = model(batch)  # as if both lines filled the batch
    frames = alone.shape[0]
    # The BiLSTM stops at the line's end; what is left is the CNN's border (receptive field
    # over padding), a few 1e-4 in the last frames.
    assert torch.allclose(alone[:, 0], together[:frames, 0], atol=1e-3)
    assert not torch.allclose(alone[:, 0], unaware[:frames, 0], atol=1e-2)


def test_reverse_within_lengths():
    from pipeline.model import reverse_within_lengths

    sequence = torch.arange(8.0).reshape(4, 2, 1)  # (T=4, B=2, C=1): [0,2,4,6] and [1,3,5,7]
    reversed_ = reverse_within_lengths(sequence, torch.tensor([4, 2]))
    assert reversed_[:, 0, 0].tolist() == [6, 4, 2, 0]
    assert reversed_[:, 1, 0].tolist() == [3, 1, 5, 7]  # padding frames stay where they are
    assert torch.equal(reverse_within_lengths(reversed_, torch.tensor([4, 2])), sequence)


def test_contrast_normalization_maps_paper_to_0_and_ink_to_1_within_each_line():
    # line 0: grey paper 0.3 with faint ink 0.5; line 1: white paper 0 with ink 0.9, and
    # only 6 of its 10 columns real (the rest is padding, which must stay 0)
    images = torch.full((2, 1, 4, 10), 0.3)
    images[0, 0, 1, 2:4] = 0.5
    images[1] = 0.0
    images[1, 0, 1, 1:3] = 0.9
    images[1, 0, :, 6:] = 0.0
    out = normalize_contrast(images, torch.tensor([10, 6]))
    assert torch.allclose(out[0, 0, 1, 2:4], torch.ones(2))  # faint ink -> 1
    assert torch.allclose(out[0, 0, 0], torch.zeros(10))  # grey paper -> 0
    assert torch.allclose(out[1, 0, 1, 1:3], torch.ones(2))
    assert out[1, :, :, 6:].abs().max() == 0  # padding untouched
    blank = normalize_contrast(torch.full((1, 1, 4, 10), 0.2), None)
    assert blank.abs().max() == 0  # no ink: nothing is stretched into noise


def test_the_network_applies_its_input_normalization():
    params = parse_params(project_params_dict())
    architecture = params.model.presets["cpu"]
    torch.manual_seed(0)
    plain = CRNN(_config(architecture)).eval()
    normed = CRNN(_config(architecture, norm="contrast")).eval()
    normed.load_state_dict(plain.state_dict())
    images = torch.rand(1, 1, architecture.height, 64) * 0.2 + 0.3  # low contrast
    with torch.no_grad():
        same_input = plain(normalize_contrast(images, None))[0]
        raw_input = plain(images)[0]
    assert torch.allclose(normed(images)[0], same_input, atol=1e-6)
    assert (raw_input - same_input).abs().max() > 1e-4  # the stretch does change the output


@pytest.mark.parametrize("preset", ["cpu", "cpu64", "reference"])
def test_presets_convolve_channels_last_and_compute_the_same_function(preset):
    architecture = parse_params(project_params_dict()).model.presets[preset]
    model = CRNN(_config(architecture)).eval()
    assert model.encoder[0][0].conv1.weight.is_contiguous(memory_format=torch.channels_last)
    plain = CRNN(_config(architecture)).eval()
    for parameter in plain.parameters():
        parameter.data = parameter.data.contiguous()  # the usual layout, same weights
        assert parameter.is_contiguous()
    plain.load_state_dict(model.state_dict())
    images = torch.rand(2, 1, architecture.height, 3 * architecture.height)
    with torch.no_grad():
        torch.testing.assert_close(model(images)[0], plain(images)[0], atol=1e-4, rtol=1e-4)


def test_a_thin_strided_1x1_convolution_keeps_the_usual_layout(tiny_params):
    # tiny presets downsample 8 channels with a strided 1x1 convolution: in channels-last
    # its oneDNN backward corrupts the heap (the process aborts), so it must stay NCHW
    model = CRNN(_config(tiny_params.model.architecture))
    thin = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d) and m.in_channels < 16]
    assert any(m.kernel_size == (1, 1) and m.stride != (1, 1) for m in thin)
    assert all(p.is_contiguous() for p in model.parameters())
    images = torch.rand(3, 1, tiny_params.model.architecture.height, 90)
    log_probs, shortcut = model(images, torch.tensor([90, 60, 30]))
    (log_probs.sum() + shortcut.sum()).backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
