"""CPU smoke run of video captioning: CoCa over the video tower's tokens on mmjax_clips.

python main.py --config=configs/smoke_video_coca.py --workdir=/tmp/mmjax_smoke_video_coca
python main.py --config=configs/smoke_video_coca.py --workdir=/tmp/mmjax_smoke_video_coca \
    --mode=caption

The captioning baseline to beat is the same model shown the first frame only:
    --mode=caption --config.data.video.eval_preprocess='decode_frames|sample_clip|still(frame=0)'
"""

from configs import common, smoke_video


def get_config():
    config = common.as_coca(smoke_video.get_config(), decoder_depth=2)
    config.name = "smoke_video_coca"
    return config
