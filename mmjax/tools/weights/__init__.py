"""Weight converters: open_clip, Hugging Face and big_vision in and out of mmjax."""
