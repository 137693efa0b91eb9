"""GPT-2 as Hugging Face ships it (§7.1, "a 120 million parameter GPT model from Hugging Face").

- `gpt2`: its weights into minigen's GPT and back (`load_gpt2`, `save_gpt2`);
- `gpt2_tokenizer`: its byte-level BPE (byte table, pre-tokeniser, merges, training) and its
  vocab.json / merges.txt files, which `minigen.text.ByteBPETokenizer` reads and writes.
"""
