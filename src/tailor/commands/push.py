"""`tailor push RUN_OR_FOLDER OWNER/NAME`: upload a fine-tune to the Hugging Face Hub in one commit."""

from __future__ import annotations


def add_arguments(parser) -> None:
    parser.add_argument("source", metavar="RUN_OR_FOLDER",
                        help="A run folder (its final/ is pushed) or a final/, adapter or model folder.")
    parser.add_argument("repo_id", metavar="OWNER/NAME", help="The Hub repo to push to (created if missing).")
    parser.add_argument("--private", action="store_true", help="Create the repo private (an existing repo keeps "
                        "its visibility).")
    parser.add_argument("--merged", action="store_true",
                        help="Push the adapter folded into its base: a plain transformers model.")
    parser.add_argument("--revision", metavar="BRANCH", help="Commit to this branch (created if missing).")
    parser.add_argument("--token", help="A Hub token with write access (default: HF_TOKEN, then `hf auth login`).")
    parser.add_argument("--message", "-m", help="The commit message.")


def run(args) -> int:
    from tailor.export.hub import push

    result = push(args.source, args.repo_id, private=args.private, merged=args.merged, revision=args.revision,
                  token=args.token, message=args.message)
    print(f"pushed {len(result.files)} files: {result.url}\ncommit: {result.commit_url}")
    return 0
