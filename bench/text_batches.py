"""Length-sorted vs input-order text batches: `features.encode` of rt-polarity sentences with the bundled MiniLM,
cold (no cache), the same model object, alternating order of the two arms over repeats. Writes
bench/results/text_batches.md (or bench/work/ with --quick)."""

from __future__ import annotations

import json
import os
import time

from _harness import RESULTS, THREADS, WORK, header, log, parser, shared_data


def main(argv: list[str] | None = None) -> None:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=2000, help="sentences (half positive, half negative)")
    p.add_argument("--repeats", type=int, default=2)
    args = p.parse_args(argv)
    args.data = shared_data(args.data_arg, "text/rt-polarity")
    if args.quick:
        args.n, args.repeats = 200, 1
    import torch

    torch.set_num_threads(THREADS)
    from encode import rt_examples  # the same sentences as bench/encode.py's text row

    from polymodal.features import encode
    from polymodal.features import extract as extract_mod
    from polymodal.models import build_encoder

    started, load0 = time.time(), os.getloadavg()
    examples = rt_examples(args.data, args.n)
    enc = build_encoder("minilm")
    tok = enc.tokenizer
    lengths = [len(ids) for ids in tok([e.text for e in examples])["input_ids"]]
    batch = 32
    sorted_order = extract_mod.length_order([e.text for e in examples], tok)

    def padded(order):  # tokens the model runs over, in batches of `batch` (capped at the encoder's max_tokens)
        cap = enc.max_tokens
        return sum(len(order[i:i + batch]) * min(cap, max(lengths[j] for j in order[i:i + batch]))
                   for i in range(0, len(order), batch))

    real = sum(min(enc.max_tokens, n) for n in lengths)
    arms = {"unsorted (before)": lambda texts, tokenizer=None: list(range(len(texts))),
            "length-sorted (polymodal now)": extract_mod.length_order}
    times: dict[str, list[float]] = {k: [] for k in arms}
    feats = {}
    original = extract_mod.length_order
    try:
        for r in range(args.repeats):
            for name in (list(arms) if r % 2 == 0 else list(arms)[::-1]):
                extract_mod.length_order = arms[name]
                t0 = time.perf_counter()
                feats[name] = encode("minilm", examples, batch_size=batch, cache=False, encoder=enc, progress=False).pooled
                times[name].append(time.perf_counter() - t0)
                log(f"{name}: {times[name][-1]:.2f} s")
    finally:
        extract_mod.length_order = original
    a, b = feats.values()
    max_err = (a - b).abs().max().item()
    report = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "runtime_s": time.time() - started,
              "load": [load0, os.getloadavg()]}
    lines = header(report, args, "# Length-sorted text batches (MiniLM, features.encode)", "text_batches.py")
    lines += [f"{args.n} rt-polarity sentences, batch size {batch}, no cache, the same loaded model for both arms, "
              f"{args.repeats} repeat(s) in alternating order; best time of each arm.", "",
              "| batches | padded tokens run | of real tokens | best s | sentences/s |", "|---|---|---|---|---|"]
    for name, order in (("unsorted (before)", list(range(len(examples)))), ("length-sorted (polymodal now)", sorted_order)):
        best = min(times[name])
        lines.append(f"| {name} | {padded(order)} | {padded(order) / real:.2f}x | {best:.2f} | {args.n / best:.0f} |")
    speedup = min(times["unsorted (before)"]) / min(times["length-sorted (polymodal now)"])
    lines += ["", "Unsorted is the order polymodal used before: the content-hash order of the inputs to encode, i.e. random in length.", "", f"Speed-up from sorting: {speedup:.2f}x. Max abs difference of pooled features between the arms: "
              f"{max_err:.2e} (padding changes float summation only).", ""]
    out = args.out or ((WORK if args.quick else RESULTS) / "text_batches.md")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines))
    log(f"wrote {out}")
    print(json.dumps({k: min(v) for k, v in times.items()}))


if __name__ == "__main__":
    main()
