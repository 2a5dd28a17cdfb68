"""faceseg_lib.models: every smp architecture builds offline, sizes are checked early, checkpoints round-trip safely."""
import warnings

import pytest
import segmentation_models_pytorch as smp
import torch
from torch import nn

from faceseg_lib.errors import DataError
from faceseg_lib.labels import CLASSES, NUM_CLASSES
from faceseg_lib.models import (ARCHITECTURES, check_input_size, count_parameters, create_model, head_bias_name, list_encoders,
                                load_checkpoint, model_from_checkpoint, save_checkpoint)

warnings.filterwarnings('ignore', category=UserWarning)  # smp/timm notes about readout tokens and deprecated names

LIGHT = {a: 'resnet18' for a in ARCHITECTURES} | {'DPT': 'tu-test_vit'}  # timm's 0.3 M-parameter test ViT
SIZE = {a: 64 for a in ARCHITECTURES} | {'PAN': 128}                     # PAN needs at least 128 px


def _tiny(arch='FPN', **kw):
    torch.manual_seed(0)
    return create_model(arch, LIGHT[arch], encoder_weights=None, **kw).eval()


def test_architectures_come_from_smps_registry():
    assert set(ARCHITECTURES) == {c.__name__ for c in smp.MODEL_ARCHITECTURES_MAPPING.values()}
    assert {'Unet', 'UnetPlusPlus', 'MAnet', 'Linknet', 'FPN', 'PSPNet', 'DeepLabV3', 'DeepLabV3Plus', 'PAN',
            'UPerNet', 'Segformer', 'DPT'} <= set(ARCHITECTURES)


@pytest.mark.parametrize('arch', ARCHITECTURES)
def test_every_architecture_builds_offline_and_segments(arch):
    model = _tiny(arch)
    size = SIZE[arch]
    check_input_size(arch, LIGHT[arch], size)
    with torch.no_grad(): out = model(torch.randn(1, 3, size, size))
    assert out.shape == (1, NUM_CLASSES, size, size)
    assert model.faceseg_spec['arch'] == arch and count_parameters(model) > 0


def test_names_are_case_insensitive_and_canonical():
    assert create_model('unetplusplus', 'resnet18', encoder_weights=None).faceseg_spec['arch'] == 'UnetPlusPlus'


def test_unknown_arch_lists_close_matches_then_all():
    with pytest.raises(ValueError) as e: create_model('Unett', encoder_weights=None)
    msg = str(e.value)
    assert isinstance(e.value, DataError)
    assert msg.index("'Unet'") < msg.index('Fix:')          # close match offered first
    assert all(a in msg.split('Fix:')[1] for a in ARCHITECTURES)


def test_unknown_encoder_lists_close_matches_then_all():
    with pytest.raises(ValueError) as e: create_model('Unet', 'resnet343', encoder_weights=None)
    msg = str(e.value)
    assert msg.index("'resnet34'") < msg.index('Fix:') and 'mobilenet_v2' in msg.split('Fix:')[1]
    with pytest.raises(ValueError, match="tu-convnext_tiny"): create_model('Unet', 'tu-convnext_tinyy', encoder_weights=None)
    with pytest.raises(ValueError, match='Vision Transformer'): create_model('DPT', 'resnet18', encoder_weights=None)


def test_list_encoders():
    names = list_encoders()
    assert names == smp.encoders.get_encoder_names()
    assert 'mit_b0' not in list_encoders('UnetPlusPlus')
    assert list_encoders('DPT') and all(n.startswith('tu-vit') for n in list_encoders('DPT'))
    assert 'tu-convnext_tiny' in list_encoders(timm_pattern='convnext_*')


@pytest.mark.parametrize('arch,bad,good', [('FPN', 100, 96), ('UnetPlusPlus', 80, 64), ('Segformer', 48, 64),
                                           ('PSPNet', 100, 104), ('DeepLabV3Plus', 72, 80), ('PAN', 96, 128),
                                           ('DPT', 80, 96)])
def test_check_input_size_agrees_with_a_real_forward_pass(arch, bad, good):
    """What the meta-device check says matches what a real CPU forward pass does."""
    model = _tiny(arch)
    with pytest.raises(DataError, match=f'size {bad}x{bad}'): check_input_size(arch, LIGHT[arch], bad)
    check_input_size(arch, LIGHT[arch], good)
    with torch.no_grad():
        assert model(torch.zeros(1, 3, good, good)).shape[-2:] == (good, good)
        with pytest.raises(Exception): model(torch.zeros(1, 3, bad, bad))


def test_check_input_size_explains_and_suggests():
    with pytest.raises(DataError, match='divisible by 32.*96 or 128'): check_input_size('FPN', 'resnet34', 100)
    with pytest.raises(DataError, match=r'size 96x100'): check_input_size('MAnet', 'resnet34', (96, 100))
    check_input_size('DeepLabV3', 'resnet34', 520)                   # output stride 8
    check_input_size('Unet', 'resnet34', 100)                         # smp 0.6's Unet resizes in its decoder
    with pytest.raises(DataError, match='224'):                       # a fixed-size ViT
        check_input_size('DPT', 'tu-vit_base_patch16_224', 512, dynamic_img_size=False)
    with pytest.raises(DataError, match='encoder_depth=5'): check_input_size('FPN', 'resnet18', 64, encoder_depth=4)
    check_input_size('Segformer', 'mit_b0', 64)                       # an encoder that cannot be built on 'meta'


def _config(arch='FPN'):
    return {'arch': arch, 'encoder': LIGHT[arch], 'size': 64, 'lr': 1e-3, 'tags': ('a', 'b')}


def test_checkpoint_round_trip_weights_only(tmp_path):
    model = _tiny()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    for p in model.parameters(): p.grad = torch.full_like(p, 1e-3)   # one cheap step, so the optimizer has state
    opt.step()
    path = save_checkpoint(tmp_path / 'sub' / 'best.pt', model, _config(), {'mean_f1': 0.7, 'f1': {'hat': float('nan')}},
                           extra={'epoch': 4, 'ema': torch.ones(2)}, optimizer_state=opt.state_dict())
    assert [p.name for p in path.parent.iterdir()] == ['best.pt']
    raw = torch.load(path, weights_only=True)
    assert raw['classes'] == list(CLASSES) and raw['config']['tags'] == ['a', 'b'] and raw['metrics']['f1']['hat'] is None
    assert raw['model'] == {'arch': 'FPN', 'encoder': 'resnet18', 'encoder_weights': None, 'num_classes': 19, 'head': 'multiclass', 'kwargs': {}}
    assert isinstance(raw['faceseg_version'], str) and raw['extra']['epoch'] == 4
    rebuilt, ckpt = model_from_checkpoint(path)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad(): assert torch.equal(rebuilt(x), model(x))
    assert not rebuilt.training and ckpt['path'] == str(path)
    opt2 = torch.optim.AdamW(rebuilt.parameters(), lr=1e-3); opt2.load_state_dict(ckpt['optimizer'])
    assert model_from_checkpoint(ckpt)[0].state_dict().keys() == model.state_dict().keys()  # a loaded dict works too


@pytest.mark.parametrize('arch', ARCHITECTURES)
def test_a_logit_offset_saved_into_any_architecture_shifts_every_pixel_of_its_class(arch, tmp_path):
    """save_checkpoint(logit_offset=o) folds o into the head's last bias: the saved model's logits are the live model's
    plus o[c] at every pixel of class c (upsampling after that convolution keeps constants), the live model is untouched."""
    model, size = _tiny(arch), SIZE[arch]
    before = {k: v.clone() for k, v in model.state_dict().items()}
    offset = torch.linspace(-2, 1, NUM_CLASSES)
    path = save_checkpoint(tmp_path / 'best.pt', model, _config(arch), {}, logit_offset=offset)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    rebuilt, _ = model_from_checkpoint(path)
    x = torch.randn(1, 3, size, size)
    with torch.no_grad(): shift = rebuilt(x) - model(x)
    assert torch.allclose(shift, offset.view(1, -1, 1, 1).expand_as(shift), atol=1e-5), head_bias_name(model)
    with pytest.raises(ValueError, match='no segmentation_head'): head_bias_name(nn.Conv2d(3, 19, 1))


def test_checkpoint_keeps_model_options_and_unwraps(tmp_path):
    model = create_model('Unet', 'resnet18', encoder_weights=None, encoder_depth=3, decoder_channels=(32, 16, 8)).eval()
    path = save_checkpoint(tmp_path / 'u.pt', nn.DataParallel(model), _config('Unet'), {})
    rebuilt, _ = model_from_checkpoint(path)
    assert not any(k.startswith('module.') for k in torch.load(path, weights_only=True)['state_dict'])
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad(): assert torch.equal(rebuilt(x), model(x))


def test_save_is_atomic(tmp_path, monkeypatch):
    path = save_checkpoint(tmp_path / 'best.pt', _tiny(), _config(), {'mean_f1': 0.1})
    before = path.read_bytes()
    def broken_save(obj, f, *a, **k): f.write(b'half'); raise OSError('disk full')
    monkeypatch.setattr(torch, 'save', broken_save)
    with pytest.raises(OSError, match='disk full'): save_checkpoint(path, _tiny(), _config(), {'mean_f1': 0.9})
    assert path.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == ['best.pt']


def test_save_refuses_what_weights_only_cannot_load(tmp_path):
    with pytest.raises(TypeError, match=r"config\['fn'\]"): save_checkpoint(tmp_path / 'x.pt', _tiny(), {'fn': print}, {})
    with pytest.raises(TypeError, match=r"extra\['obj'\]"): save_checkpoint(tmp_path / 'x.pt', _tiny(), _config(), {}, extra={'obj': object()})
    assert not list(tmp_path.iterdir())


def test_missing_file_is_a_data_error(tmp_path):
    with pytest.raises(DataError, match=r'nope\.pt: no such checkpoint file'): load_checkpoint(tmp_path / 'nope.pt')
    with pytest.raises(DataError, match='is a folder'): model_from_checkpoint(tmp_path)


def test_random_and_foreign_files_are_data_errors(tmp_path):
    (tmp_path / 'random.pt').write_bytes(torch.randint(0, 256, (1000,), dtype=torch.uint8).numpy().tobytes())
    with pytest.raises(DataError, match=r'random\.pt: cannot be read'): load_checkpoint(tmp_path / 'random.pt')
    torch.save(_tiny().state_dict(), tmp_path / 'bare.pt')
    with pytest.raises(DataError, match=r'bare\.pt: is a PyTorch file but not a faceseg checkpoint'): load_checkpoint(tmp_path / 'bare.pt')
    torch.save({'format': 'faceseg-checkpoint', 'x': nn.Identity()}, tmp_path / 'pickled.pt')   # code a weights-only load refuses
    with pytest.raises(DataError, match=r'pickled\.pt: holds the Python object \S*Identity, which faceseg refuses to load: unpickling it could run any code'): load_checkpoint(tmp_path / 'pickled.pt')


def test_other_class_layout_is_a_data_error(tmp_path):
    path = save_checkpoint(tmp_path / 'best.pt', _tiny(), _config(), {})
    raw = torch.load(path, weights_only=True)
    raw['classes'] = raw['classes'][:11]; torch.save(raw, tmp_path / 'lips.pt')
    with pytest.raises(DataError, match=r'lips\.pt: it was trained for 11 classes, this faceseg has 19'): load_checkpoint(tmp_path / 'lips.pt')
    raw = torch.load(path, weights_only=True)
    raw['classes'][8], raw['classes'][9] = 'r_ear', 'l_ear'; torch.save(raw, tmp_path / 'swap.pt')
    with pytest.raises(DataError, match=r"swap\.pt: .*label 8 is 'r_ear' there but 'l_ear' here"): model_from_checkpoint(tmp_path / 'swap.pt')


def test_weights_of_another_architecture_are_a_data_error(tmp_path):
    path = save_checkpoint(tmp_path / 'best.pt', _tiny('FPN'), _config(), {})
    raw = torch.load(path, weights_only=True)
    raw['model']['arch'] = 'Unet'; torch.save(raw, tmp_path / 'other.pt')
    with pytest.raises(DataError, match=r'other\.pt: its weights do not fit the Unet/resnet18 model'): model_from_checkpoint(tmp_path / 'other.pt')
    raw['model']['arch'] = 'NoSuchNet'; torch.save(raw, tmp_path / 'gone.pt')
    with pytest.raises(DataError, match=r'gone\.pt: its model NoSuchNet/resnet18 cannot be built here'): model_from_checkpoint(tmp_path / 'gone.pt')


def test_count_parameters():
    model = nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 2))
    model[0].requires_grad_(False)
    assert count_parameters(model) == 16 + 10 and count_parameters(model, trainable_only=True) == 10


def test_encoder_weights_from_a_local_file_and_a_file_for_another_encoder_refused(tmp_path):
    from faceseg_lib.models import create_model
    src = create_model('Unet', 'resnet18', encoder_weights=None)
    sd = src.encoder.state_dict() | {'fc.weight': torch.zeros(2, 2), 'fc.bias': torch.zeros(2)}  # an ImageNet head is dropped
    torch.save(sd, tmp_path / 'r18.pth')
    from safetensors.torch import save_file
    save_file({k: v.contiguous() for k, v in src.encoder.state_dict().items()}, str(tmp_path / 'r18.safetensors'))
    for f in ('r18.pth', 'r18.safetensors'):
        m = create_model('FPN', 'resnet18', encoder_weights=str(tmp_path / f))
        assert all(torch.equal(m.encoder.state_dict()[k], v) for k, v in src.encoder.state_dict().items()), f
    with pytest.raises(DataError) as e:
        create_model('Unet', 'mobilenet_v2', encoder_weights=str(tmp_path / 'r18.pth'))
    msg = str(e.value)
    assert str(tmp_path / 'r18.pth') in msg and 'missing keys' in msg and 'unexpected keys' in msg and "'mobilenet_v2'" in msg
    assert "['features.0.0.weight'" in msg and "['conv1.weight'" in msg  # the key lists themselves


def test_encoder_weights_in_timms_and_efficientnet_pytorchs_layouts_load_and_a_misfit_names_the_layouts_tried(tmp_path):
    """A timm model's own weights (classifier included, as timm and the hub save them) load into its `tu-` encoder, and an
    EfficientNet in efficientnet_pytorch's layout (smp's `efficientnet-b0`) into timm's (`timm-efficientnet-b0`), every
    tensor in its place; a file that fits in no layout is refused with the closest reading's key lists."""
    import timm
    from faceseg_lib.models import create_model
    full = timm.create_model('efficientnet_lite0', pretrained=False)
    torch.save(full.state_dict(), tmp_path / 'lite0.pth')
    lite = create_model('FPN', 'tu-efficientnet_lite0', encoder_weights=str(tmp_path / 'lite0.pth')).encoder.state_dict()
    assert all(torch.equal(v, full.state_dict()[k[len('model.'):]]) for k, v in lite.items())
    b0 = create_model('Unet', 'efficientnet-b0', encoder_weights=None).encoder.state_dict()
    torch.save(b0 | {'_fc.weight': torch.zeros(2, 2)}, tmp_path / 'b0.pth')
    timm_b0 = create_model('FPN', 'timm-efficientnet-b0', encoder_weights=str(tmp_path / 'b0.pth')).encoder.state_dict()
    assert len(timm_b0) == len(b0)
    for theirs, ours in [('_conv_stem.weight', 'conv_stem.weight'), ('_blocks.0._depthwise_conv.weight', 'blocks.0.0.conv_dw.weight'),
                         ('_blocks.1._expand_conv.weight', 'blocks.1.0.conv_pw.weight'), ('_blocks.1._project_conv.weight', 'blocks.1.0.conv_pwl.weight'),
                         ('_blocks.15._se_expand.weight', 'blocks.6.0.se.conv_expand.weight'), ('_conv_head.weight', 'conv_head.weight')]:
        assert torch.equal(timm_b0[ours], b0[theirs]), (theirs, ours)
    with pytest.raises(DataError) as e:
        create_model('FPN', 'tu-efficientnet_lite0', encoder_weights=str(tmp_path / 'b0.pth'))  # b0's squeeze-excitation: lite0 has none
    msg = str(e.value)
    assert "read in efficientnet_pytorch's layout as timm's efficientnet_lite0; also tried as saved" in msg
    assert "0 missing keys [], 64 unexpected keys ['model.blocks.0.0.se.conv_reduce.weight'" in msg
