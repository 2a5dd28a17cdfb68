"""The raw CelebAMask-HQ reader: layout (folder and zip), combining masks, bad-input detection, and the splits."""
import pickle
import zipfile
from pathlib import Path

import cv2
import numpy as np
import pytest

from faceseg_lib.celebamask import ANNO_DIR, IMG_DIR, MAPPING_FILE, combine_parts, mask_name, open_raw
from faceseg_lib.splits import PARTITION_FILE, fraction_split, official_split, read_split_csv, resolve_split, seed_split, split_counts
from faceseg_lib.errors import DataError
from faceseg_lib.labels import CLASS_INDEX, NUM_CLASSES
from helpers import M, fake_masks, make_zip, write_raw

def assert_names_file_and_fix(problems_or_error, file: Path | str):
    text = str(problems_or_error) if isinstance(problems_or_error, Exception) else '\n'.join(map(str, problems_or_error))
    assert str(file) in text, text
    assert 'Fix:' in text, text


# --- combining --------------------------------------------------------------------------------------------------
def test_combine_order_later_parts_overwrite_earlier():
    lab = combine_parts(fake_masks())
    assert lab[2, 3] == CLASS_INDEX['hat']      # hat over hair
    assert lab[7, 20] == CLASS_INDEX['hair']    # hair over skin
    assert lab[15, 20] == CLASS_INDEX['skin']
    assert lab[12, 11] == CLASS_INDEX['l_eye']  # eye over skin
    assert lab[29, 15] == CLASS_INDEX['cloth']  # cloth over neck
    assert lab[24, 15] == CLASS_INDEX['neck']
    assert lab[20, 1] == 0
    # the order is fixed by PARTS, not by the order of the dict
    assert np.array_equal(lab, combine_parts(dict(reversed(list(fake_masks().items())))))


def test_combine_treats_values_above_127_as_on():
    lab = combine_parts({'skin': np.array([[127, 128, 255, 0]], np.uint8)})
    assert lab.tolist() == [[0, 1, 1, 0]]
    assert combine_parts({'nose': np.array([[True, False]])}).tolist() == [[CLASS_INDEX['nose'], 0]]


# --- reading ------------------------------------------------------------------------------------------------------
def test_reader_on_a_folder(tmp_path):
    write_raw(tmp_path / 'CelebAMask-HQ')
    for path in (tmp_path / 'CelebAMask-HQ', tmp_path):  # the root itself or the folder holding CelebAMask-HQ/
        raw = open_raw(path)
        assert raw.ids() == [0, 1, 2, 2001, 4123]
    assert raw.part_files(4123)['hat'].endswith(f'{ANNO_DIR}/2/04123_hat.png')
    assert list(raw.part_files(1)) == ['skin', 'l_eye', 'hair', 'hat', 'neck', 'cloth']  # PARTS order
    im = raw.read_image(2001)
    assert im.shape == (2 * M, 2 * M, 3) and im.dtype == np.uint8
    parts = raw.read_parts(2001)
    assert set(parts) == set(fake_masks()) and parts['skin'].dtype == bool and parts['skin'].shape == (M, M)
    lab = raw.read_label(2001)
    assert lab.shape == (M, M) and lab.dtype == np.uint8 and lab.max() < NUM_CLASSES
    assert np.array_equal(lab, combine_parts({p: np.roll(m, 2001 % 3, axis=1) for p, m in fake_masks().items()}))
    assert raw.check(deep=True) == []
    assert raw.read_text(MAPPING_FILE) is None


def test_read_image_is_rgb(tmp_path):
    root = write_raw(tmp_path, ids=(5,))
    bgr = np.zeros((2 * M, 2 * M, 3), np.uint8); bgr[..., 2] = 250  # OpenCV writes BGR: this is pure red
    cv2.imwrite(str(root / IMG_DIR / '5.jpg'), bgr)
    r, g, b = open_raw(root).read_image(5)[M, M]
    assert r > 200 and g < 30 and b < 30


def test_zip_and_folder_readers_agree(tmp_path):
    tree = write_raw(tmp_path / 'tree')
    (tree / MAPPING_FILE).write_text('idx orig_idx orig_file\n0 1 000002.jpg\n')
    folder, zipped = open_raw(tree), open_raw(make_zip(tree, tmp_path / 'CelebAMask-HQ.zip'))
    assert zipped.ids() == folder.ids()
    assert zipped.read_text(MAPPING_FILE) == folder.read_text(MAPPING_FILE)
    assert zipped.part_files(2001)['hair'] == f"{tmp_path / 'CelebAMask-HQ.zip'}/CelebAMask-HQ/{ANNO_DIR}/1/02001_hair.png"
    for id in folder.ids():
        assert list(zipped.part_files(id)) == list(folder.part_files(id))
        assert np.array_equal(zipped.read_image(id), folder.read_image(id))
        assert np.array_equal(zipped.read_label(id), folder.read_label(id))
    # a worker process gets a pickled copy that reopens the zip by itself
    again = pickle.loads(pickle.dumps(zipped))
    assert np.array_equal(again.read_label(4123), folder.read_label(4123))


def test_missing_folders_say_what_to_download(tmp_path):
    with pytest.raises(DataError, match='Fix: download CelebAMask-HQ.zip') as e:
        open_raw(tmp_path)
    assert str(tmp_path) in str(e.value)
    (tmp_path / IMG_DIR).mkdir()
    cv2.imwrite(str(tmp_path / IMG_DIR / '1.jpg'), np.zeros((8, 8, 3), np.uint8))
    with pytest.raises(DataError, match='Fix: download') as e:
        open_raw(tmp_path)
    assert str(tmp_path / ANNO_DIR) in str(e.value)
    with zipfile.ZipFile(tmp_path / 'other.zip', 'w') as zf: zf.writestr('x/readme.txt', 'hi')
    with pytest.raises(DataError, match='Fix: download'):
        open_raw(tmp_path / 'other.zip')


def test_empty_dataset_is_an_error_at_once(tmp_path):
    (tmp_path / IMG_DIR).mkdir(); (tmp_path / ANNO_DIR / '0').mkdir(parents=True)
    with pytest.raises(DataError, match='holds no images') as e:
        open_raw(tmp_path)
    assert_names_file_and_fix(e.value, tmp_path / IMG_DIR)


# --- bad input: each problem names the file and the fix --------------------------------------------------------------
def test_image_without_masks(tmp_path):
    root = write_raw(tmp_path)
    for f in (root / ANNO_DIR / '0').glob('00001_*.png'): f.unlink()
    problems = open_raw(root).check()
    assert len(problems) == 1 and 'no mask files' in problems[0].problem
    assert_names_file_and_fix(problems, root / IMG_DIR / '1.jpg')
    with pytest.raises(DataError, match='no mask files'):
        open_raw(root).read_label(1)


def test_masks_without_image(tmp_path):
    root = write_raw(tmp_path)
    (root / IMG_DIR / '2.jpg').unlink()
    raw = open_raw(root)
    assert 2 not in raw.ids()
    [p] = raw.check()
    assert 'no image' in p.problem and '6 mask file(s)' in p.problem
    assert_names_file_and_fix([p], root / ANNO_DIR / '0' / '00002_')


def test_unknown_part_name(tmp_path):
    root = write_raw(tmp_path)
    cv2.imwrite(str(root / ANNO_DIR / '0' / '00001_beard.png'), np.zeros((M, M), np.uint8))
    [p] = open_raw(root).check()
    assert "unknown part 'beard'" in p.problem and 'skin, nose' in p.fix
    assert_names_file_and_fix([p], root / ANNO_DIR / '0' / '00001_beard.png')


def test_mask_in_the_wrong_folder(tmp_path):
    root = write_raw(tmp_path)
    (root / ANNO_DIR / '3').mkdir()
    (root / mask_name(2001, 'hat')).rename(root / ANNO_DIR / '3' / '02001_hat.png')
    raw = open_raw(root)
    [p] = raw.check()
    assert 'belong in folder 1' in p.problem and f'{ANNO_DIR}/1/' in p.fix
    assert_names_file_and_fix([p], root / ANNO_DIR / '3' / '02001_hat.png')
    assert 'hat' not in raw.part_files(2001)


@pytest.mark.parametrize('which', ['jpeg', 'png', 'garbage'])
def test_corrupt_files(tmp_path, which):
    root = write_raw(tmp_path)
    f = root / IMG_DIR / '2.jpg' if which == 'jpeg' else root / mask_name(2, 'hair')
    data = f.read_bytes()
    f.write_bytes(data[:len(data) // 2] if which != 'garbage' else b'not a png at all')
    raw = open_raw(root)
    assert raw.check() == []  # names are fine: only decoding finds it
    [p] = raw.check(deep=True)
    assert 'cannot be decoded' in p.problem
    assert_names_file_and_fix([p], f)
    with pytest.raises(DataError, match='cannot be decoded'):
        raw.read_image(2) if which == 'jpeg' else raw.read_label(2)


def test_mask_of_the_wrong_size(tmp_path):
    root = write_raw(tmp_path)
    cv2.imwrite(str(root / mask_name(1, 'neck')), np.zeros((M + 4, M), np.uint8))
    [p] = open_raw(root).check(deep=True)
    assert f'is {M}x{M + 4} but the other masks of id 1 are {M}x{M}' in p.problem
    assert_names_file_and_fix([p], root / mask_name(1, 'neck'))


def test_masks_with_another_aspect_ratio_than_the_image(tmp_path):
    root = write_raw(tmp_path)
    cv2.imwrite(str(root / IMG_DIR / '4123.jpg'), np.zeros((2 * M, 3 * M, 3), np.uint8))
    [p] = open_raw(root).check(deep=True)
    assert 'different aspect ratio' in p.problem
    assert_names_file_and_fix([p], root / IMG_DIR / '4123.jpg')


# --- splits -----------------------------------------------------------------------------------------------------------
def test_seed_split_sizes_and_determinism():
    ids = list(range(100, 5600))
    s = seed_split(ids)
    assert split_counts(s) == {'train': 3375, 'val': 375, 'test': 1250}
    assert set(s) <= set(ids)
    assert s == seed_split(ids[::-1], seed=0)   # same seed, same split (input order does not matter)
    assert s != seed_split(ids, seed=1)         # another seed, another split
    small = seed_split(range(20), seed=4, sizes=(10, 5, 5))
    assert split_counts(small) == {'train': 10, 'val': 5, 'test': 5}
    with pytest.raises(DataError, match='needs 5000 images but the dataset has 300.*fractions'):
        seed_split(range(300))


def test_fraction_split():
    s = fraction_split(range(300))
    assert split_counts(s) == {'train': 240, 'val': 30, 'test': 30} and sorted(s) == list(range(300))
    assert s == fraction_split(range(300)) and s != fraction_split(range(300), seed=1)
    assert split_counts(fraction_split(range(7), (0.8, 0.1, 0.1))) == {'train': 5, 'val': 1, 'test': 1}
    with pytest.raises(DataError, match='Fix'):
        fraction_split(range(10), (0.9, 0.2, 0.1))


def test_split_csv_in_the_original_format(tmp_path):
    order = [17, 3, 40, 8, 22, 31, 5, 12, 29, 1, 36, 14, 9, 25, 33, 2, 19, 27, 6, 38, 11, 21]  # file order, not id order
    names = lambda i: [f'{i}', f'{i}.jpg', f'{i:05d}'][i % 3]
    test_ids = {40, 8, 2}
    csv = tmp_path / 'split.csv'
    csv.write_text('name,is_train\n' + ''.join(f'{names(i)},{0 if i in test_ids else 1}\n' for i in order))
    s = read_split_csv(csv, range(50))
    train_rows = [i for i in order if i not in test_ids]  # 19 train rows: the last int(1.9) = 1 is validation
    assert {i for i in s if s[i] == 'test'} == test_ids
    assert [i for i in s if s[i] == 'val'] == train_rows[-1:]
    assert {i for i in s if s[i] == 'train'} == set(train_rows[:-1])
    csv.write_text('name,is_train\n' + ''.join(f'{i}.jpg,{int(i < 80)}\n' for i in range(100)))
    s = read_split_csv(csv, range(100))
    assert split_counts(s) == {'train': 72, 'val': 8, 'test': 20}
    assert [i for i in s if s[i] == 'val'] == list(range(72, 80))  # the LAST 10% of the train rows


def test_split_csv_naming_absent_ids(tmp_path):
    csv = tmp_path / 'mysplit.csv'
    csv.write_text('name,is_train\n' + ''.join(f'{i}.jpg,1\n' for i in range(10)))
    with pytest.raises(DataError) as e:
        read_split_csv(csv, range(6))
    assert str(csv) in str(e.value) and '[6, 7, 8, 9]' in str(e.value) and 'Fix:' in str(e.value)
    csv.write_text('file,train\n1,1\n')
    with pytest.raises(DataError, match='name,is_train'):
        read_split_csv(csv, range(6))


def test_split_csv_naming_each_images_split_reuses_a_prepared_sets_split(train_set, tmp_path):
    """A `name,split` (or `id,split`) csv puts each image where it says: a prepared dataset's own splits.csv, given to
    `prepare --split`, gives back the same split (a fixed held-out split, kept at another size)."""
    import json
    from faceseg_lib.prepare import prepare
    prepare(train_set.parent / 'raw', tmp_path / 'again', size=32, split=str(train_set / 'splits.csv'), workers=1, progress=False)
    assert (tmp_path / 'again' / 'splits.csv').read_text() == (train_set / 'splits.csv').read_text()
    assert json.loads((tmp_path / 'again' / 'meta.json').read_text())['split_method'] == 'csv:splits.csv'
    csv = tmp_path / 'named.csv'
    csv.write_text('name,split\n3.jpg,test\n4.jpg,holdout\n')
    with pytest.raises(DataError, match=r"not like '123.jpg,val' \(first: \['4.jpg,holdout'\]\)"):
        read_split_csv(csv, range(6))

MAPPING = 'idx orig_idx orig_file\n0 169999 170000.jpg\n1 99094 099095.jpg\n2 200121 200122.jpg\n3 81059 081060.jpg\n4 202018 202019.jpg\n'
PARTITION = '081060.jpg 0\n099095.jpg 0\n170000.jpg 1\n200122.jpg 2\n202019.jpg 2\n000001.jpg 0\n'


def test_official_split_by_original_file_number_needs_no_partition_file():
    # CelebA's partition is contiguous: 000001-162770 train, 162771-182637 val, 182638-202599 test
    edges = 'idx orig_idx orig_file\n' + ''.join(f'{i} {n - 1} {n:06d}.jpg\n' for i, n in
                                               enumerate((1, 162770, 162771, 182637, 182638, 202599)))
    assert official_split(edges) == {0: 'train', 1: 'train', 2: 'val', 3: 'val', 4: 'test', 5: 'test'}
    s = official_split(MAPPING, None, [0, 1, 2, 3, 4])
    assert s == {0: 'val', 1: 'train', 2: 'test', 3: 'train', 4: 'test'}
    assert official_split(MAPPING, PARTITION, [0, 1, 2, 3, 4]) == s  # the partition file, where given, agrees
    with pytest.raises(DataError) as e:
        official_split(MAPPING, None, [0, 1, 9])
    assert MAPPING_FILE in str(e.value) and '[9]' in str(e.value) and 'Fix:' in str(e.value)
    with pytest.raises(DataError, match=f'{PARTITION_FILE}.*202019.jpg \\(None there, test by number\\).*Fix'):
        official_split(MAPPING, PARTITION.replace('202019.jpg 2\n', ''), [4])
    with pytest.raises(DataError, match='no CelebA file 000001.jpg..202599.jpg'):
        official_split('idx orig_idx orig_file\n0 202599 202600.jpg\n')


def test_resolve_split(tmp_path):
    root = write_raw(tmp_path / 'raw', ids=range(5))
    raw = open_raw(root)
    split, how = resolve_split('auto', raw, raw.ids())
    assert how == 'fractions:0.8,0.1,0.1' and split_counts(split) == {'train': 3, 'val': 1, 'test': 1}
    assert resolve_split('auto', raw, range(5000))[1] == 'seed'  # enough ids for the original project's split
    assert resolve_split('seed:3', raw, range(5000)) == (seed_split(range(5000), 3), 'seed:3')
    assert resolve_split('fractions:0.6,0.2,0.2', raw, raw.ids())[1] == 'fractions:0.6,0.2,0.2'
    with pytest.raises(DataError, match='Fix'):
        resolve_split('official', raw, raw.ids())
    (root / MAPPING_FILE).write_text(MAPPING)
    assert resolve_split('auto', raw, raw.ids()) == (official_split(MAPPING), 'official')  # the mapping alone is enough
    part = tmp_path / PARTITION_FILE
    part.write_text(PARTITION)
    assert resolve_split('auto', raw, raw.ids(), partition=part) == (official_split(MAPPING, PARTITION, range(5)), 'official')
    (root / PARTITION_FILE).write_text(PARTITION)  # found in the raw root too
    assert resolve_split('auto', raw, raw.ids())[1] == 'official'
    csv = tmp_path / 'orig.csv'
    csv.write_text('name,is_train\n0,1\n1,0\n')
    assert resolve_split(csv, raw, raw.ids()) == ({0: 'train', 1: 'test'}, 'csv:orig.csv')
    with pytest.raises(DataError, match='Fix'):
        resolve_split('nonsense', raw, raw.ids())


# --- the real sample ------------------------------------------------------------------------------------------------
def test_reader_on_the_real_sample(sample_dir):
    raw = open_raw(sample_dir)
    ids = raw.ids()
    assert len(ids) == 300 and min(ids) >= 30000
    assert raw.index_problems() == []
    assert all(f'{ANNO_DIR}/15/' in f for f in raw.part_files(ids[0]).values())
    for id in ids[:5]:
        im, lab = raw.read_image(id), raw.read_label(id)
        assert im.ndim == 3 and im.shape[2] == 3 and lab.dtype == np.uint8 and lab.max() <= 18
        assert im.shape[0] * lab.shape[1] == im.shape[1] * lab.shape[0]
        present = set(np.unique(lab).tolist())
        assert {0, CLASS_INDEX['skin'], CLASS_INDEX['nose']} <= present, (id, present)
    assert any(CLASS_INDEX['hair'] in raw.read_label(id) for id in ids[:5])
    assert all(not raw.read_pair(id)[1] for id in ids[:10])
