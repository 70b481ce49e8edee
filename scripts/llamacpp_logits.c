/*
 * pocketvl-llamacpp-logits: evaluate a prompt with llama.cpp and dump its logits.
 *
 * Why: to compare llama.cpp's view of a pocketvl-converted GGUF with the official
 * implementation's goldens we need raw logits for an exact token-id prompt (so tokenizer
 * differences cannot matter), which none of llama.cpp's stock programs print. This is our own
 * small program written against llama.h's public API (llama-cpp-python 0.3.36's vendored
 * llama.cpp); scripts/llamacpp-interop.sh builds it.
 *
 * Usage:
 *   pocketvl-llamacpp-logits -m MODEL.gguf (--ids 1,2,3 | --text "Hello") [-n N_GEN]
 *                            [-o OUT] [--all] [--raw] [-t THREADS] [--add-special]
 *
 *   --ids        comma- or space-separated prompt token ids
 *   --text       prompt text, tokenized by the model's own tokenizer (no BOS unless
 *                --add-special)
 *   -n           greedy tokens to generate after the prompt (default 0); their ids are printed
 *   -o           output file for the logits (default: none). .npy unless --raw (float32 LE)
 *   --all        write the logits of every prompt position ([n_prompt, n_vocab]) instead of the
 *                last one ([n_vocab])
 *   --kv-f32     keep the KV cache in float32 (llama.cpp's default is f16, which rounds K and V)
 *   --no-fa      disable flash attention (default: llama.cpp decides)
 *
 * Stdout (machine-readable, one item a line):
 *   n_vocab N / prompt_ids ... / argmax_last ID / generated ... / generated_text ...
 * Exit status is non-zero on any failure, with the reason on stderr.
 */
#include "llama.h"

#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void usage(const char *argv0) {
    fprintf(stderr,
            "usage: %s -m MODEL.gguf (--ids 1,2,3 | --text TEXT) [-n N_GEN] [-o OUT] [--all] "
            "[--raw] [-t THREADS] [--add-special] [--kv-f32] [--no-fa] [--verbose]\n",
            argv0);
}

/* Parses a list of non-negative ids separated by commas and/or whitespace. */
static int parse_ids(const char *s, llama_token **out, int *n_out) {
    size_t cap = 16;
    int n = 0;
    llama_token *ids = malloc(cap * sizeof(llama_token));
    if (!ids) return -1;
    const char *p = s;
    while (*p) {
        while (*p == ',' || *p == ' ' || *p == '\t' || *p == '\n' || *p == '[' || *p == ']') p++;
        if (!*p) break;
        char *end = NULL;
        errno = 0;
        long v = strtol(p, &end, 10);
        if (end == p || errno != 0 || v < 0 || v > INT32_MAX) {
            fprintf(stderr, "error: bad token id near '%.16s'\n", p);
            free(ids);
            return -1;
        }
        if ((size_t)n == cap) {
            cap *= 2;
            llama_token *grown = realloc(ids, cap * sizeof(llama_token));
            if (!grown) {
                free(ids);
                return -1;
            }
            ids = grown;
        }
        ids[n++] = (llama_token)v;
        p = end;
    }
    *out = ids;
    *n_out = n;
    return 0;
}

/* Writes a little-endian float32 .npy (format 1.0) of the given shape (1 or 2 dims). */
static int write_npy(const char *path, const float *data, size_t rows, size_t cols, int two_d) {
    FILE *f = fopen(path, "wb");
    if (!f) {
        fprintf(stderr, "error: cannot open %s: %s\n", path, strerror(errno));
        return -1;
    }
    char dict[128];
    if (two_d) {
        snprintf(dict, sizeof dict, "{'descr': '<f4', 'fortran_order': False, 'shape': (%zu, %zu), }",
                 rows, cols);
    } else {
        snprintf(dict, sizeof dict, "{'descr': '<f4', 'fortran_order': False, 'shape': (%zu,), }",
                 cols);
    }
    /* magic(6) + version(2) + header_len(2) + dict + padding + '\n' must be a multiple of 64 */
    size_t dict_len = strlen(dict);
    size_t total = 10 + dict_len + 1;
    size_t pad = (64 - total % 64) % 64;
    uint16_t header_len = (uint16_t)(dict_len + pad + 1);
    unsigned char pre[10] = {0x93, 'N', 'U', 'M', 'P', 'Y', 1, 0,
                             (unsigned char)(header_len & 0xff), (unsigned char)(header_len >> 8)};
    int ok = fwrite(pre, 1, 10, f) == 10 && fwrite(dict, 1, dict_len, f) == dict_len;
    for (size_t i = 0; ok && i < pad; i++) ok = fputc(' ', f) != EOF;
    ok = ok && fputc('\n', f) != EOF;
    ok = ok && fwrite(data, sizeof(float), rows * cols, f) == rows * cols;
    if (fclose(f) != 0) ok = 0;
    if (!ok) fprintf(stderr, "error: writing %s failed\n", path);
    return ok ? 0 : -1;
}

static int write_raw(const char *path, const float *data, size_t n) {
    FILE *f = fopen(path, "wb");
    if (!f) {
        fprintf(stderr, "error: cannot open %s: %s\n", path, strerror(errno));
        return -1;
    }
    int ok = fwrite(data, sizeof(float), n, f) == n;
    if (fclose(f) != 0) ok = 0;
    if (!ok) fprintf(stderr, "error: writing %s failed\n", path);
    return ok ? 0 : -1;
}

static llama_token argmax(const float *v, int n) {
    int best = 0;
    for (int i = 1; i < n; i++)
        if (v[i] > v[best]) best = i;
    return (llama_token)best;
}

static int quiet_logs = 1;

/* Silences llama.cpp's default progress dots on stderr while keeping the load cancellable. */
static bool no_progress(float progress, void *user) {
    (void)progress;
    (void)user;
    return true;
}

static void log_cb(enum ggml_log_level level, const char *text, void *user) {
    (void)user;
    if (!quiet_logs || level >= GGML_LOG_LEVEL_WARN) fputs(text, stderr);
}

int main(int argc, char **argv) {
    const char *model_path = NULL, *ids_arg = NULL, *text_arg = NULL, *out_path = NULL;
    int n_gen = 0, all = 0, raw = 0, n_threads = 2, add_special = 0, kv_f32 = 0, no_fa = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        const int has_val = i + 1 < argc;
        if (!strcmp(a, "-m") && has_val) model_path = argv[++i];
        else if (!strcmp(a, "--ids") && has_val) ids_arg = argv[++i];
        else if (!strcmp(a, "--text") && has_val) text_arg = argv[++i];
        else if (!strcmp(a, "-n") && has_val) n_gen = atoi(argv[++i]);
        else if (!strcmp(a, "-o") && has_val) out_path = argv[++i];
        else if (!strcmp(a, "-t") && has_val) n_threads = atoi(argv[++i]);
        else if (!strcmp(a, "--all")) all = 1;
        else if (!strcmp(a, "--raw")) raw = 1;
        else if (!strcmp(a, "--add-special")) add_special = 1;
        else if (!strcmp(a, "--kv-f32")) kv_f32 = 1;
        else if (!strcmp(a, "--no-fa")) no_fa = 1;
        else if (!strcmp(a, "--verbose")) quiet_logs = 0;
        else {
            usage(argv[0]);
            return 2;
        }
    }
    if (!model_path || (!ids_arg == !text_arg) || n_gen < 0 || n_threads < 1) {
        usage(argv[0]);
        return 2;
    }

    llama_log_set(log_cb, NULL);
    llama_backend_init();

    struct llama_model_params mp = llama_model_default_params();
    mp.n_gpu_layers = 0;
    if (quiet_logs) mp.progress_callback = no_progress;
    struct llama_model *model = llama_model_load_from_file(model_path, mp);
    if (!model) {
        fprintf(stderr, "error: llama.cpp could not load %s (run with --verbose for its log)\n",
                model_path);
        return 1;
    }
    const struct llama_vocab *vocab = llama_model_get_vocab(model);
    const int n_vocab = llama_vocab_n_tokens(vocab);

    llama_token *prompt = NULL;
    int n_prompt = 0;
    if (ids_arg) {
        if (parse_ids(ids_arg, &prompt, &n_prompt) != 0) return 1;
    } else {
        int len = (int)strlen(text_arg);
        int need = -llama_tokenize(vocab, text_arg, len, NULL, 0, add_special, 1);
        if (need <= 0) {
            fprintf(stderr, "error: tokenizing the prompt gave no tokens\n");
            return 1;
        }
        prompt = malloc((size_t)need * sizeof(llama_token));
        if (!prompt) return 1;
        n_prompt = llama_tokenize(vocab, text_arg, len, prompt, need, add_special, 1);
        if (n_prompt < 0) {
            fprintf(stderr, "error: tokenize failed (%d)\n", n_prompt);
            return 1;
        }
    }
    if (n_prompt == 0) {
        fprintf(stderr, "error: empty prompt\n");
        return 1;
    }
    for (int i = 0; i < n_prompt; i++) {
        if (prompt[i] >= n_vocab) {
            fprintf(stderr, "error: prompt id %d >= n_vocab %d\n", prompt[i], n_vocab);
            return 1;
        }
    }

    struct llama_context_params cp = llama_context_default_params();
    cp.n_ctx = (uint32_t)(n_prompt + n_gen + 8);
    cp.n_batch = (uint32_t)n_prompt; /* the whole prompt in one batch */
    cp.n_ubatch = (uint32_t)n_prompt;
    cp.n_threads = n_threads;
    cp.n_threads_batch = n_threads;
    cp.no_perf = 1;
    if (no_fa) cp.flash_attn_type = LLAMA_FLASH_ATTN_TYPE_DISABLED;
    if (kv_f32) {
        cp.type_k = GGML_TYPE_F32;
        cp.type_v = GGML_TYPE_F32;
    }
    struct llama_context *ctx = llama_init_from_model(model, cp);
    if (!ctx) {
        fprintf(stderr, "error: llama_init_from_model failed for %s\n", model_path);
        return 1;
    }

    struct llama_batch batch = llama_batch_init(n_prompt, 0, 1);
    for (int i = 0; i < n_prompt; i++) {
        batch.token[i] = prompt[i];
        batch.pos[i] = i;
        batch.n_seq_id[i] = 1;
        batch.seq_id[i][0] = 0;
        batch.logits[i] = (int8_t)(all || i == n_prompt - 1);
    }
    batch.n_tokens = n_prompt;
    int rc = llama_decode(ctx, batch);
    if (rc != 0) {
        fprintf(stderr, "error: llama_decode of the %d-token prompt failed (%d)\n", n_prompt, rc);
        return 1;
    }
    const float *last = llama_get_logits_ith(ctx, n_prompt - 1);
    if (!last) {
        fprintf(stderr, "error: no logits for the last prompt position\n");
        return 1;
    }

    printf("n_vocab %d\nprompt_ids", n_vocab);
    for (int i = 0; i < n_prompt; i++) printf(" %d", prompt[i]);
    printf("\nargmax_last %d\n", argmax(last, n_vocab));

    if (out_path) {
        int wrc;
        if (all) {
            float *buf = malloc((size_t)n_prompt * (size_t)n_vocab * sizeof(float));
            if (!buf) return 1;
            for (int i = 0; i < n_prompt; i++) {
                const float *row = llama_get_logits_ith(ctx, i);
                if (!row) {
                    fprintf(stderr, "error: no logits for prompt position %d\n", i);
                    return 1;
                }
                memcpy(buf + (size_t)i * n_vocab, row, (size_t)n_vocab * sizeof(float));
            }
            wrc = raw ? write_raw(out_path, buf, (size_t)n_prompt * n_vocab)
                      : write_npy(out_path, buf, (size_t)n_prompt, (size_t)n_vocab, 1);
            free(buf);
        } else {
            wrc = raw ? write_raw(out_path, last, (size_t)n_vocab)
                      : write_npy(out_path, last, 1, (size_t)n_vocab, 0);
        }
        if (wrc != 0) return 1;
    }

    /* Greedy generation, one token per decode, continuing the KV cache of the prompt. */
    llama_token tok = argmax(last, n_vocab);
    printf("generated");
    char *text = calloc(1, 1);
    size_t text_len = 0;
    for (int step = 0; step < n_gen; step++) {
        printf(" %d", tok);
        char piece[256];
        int np = llama_token_to_piece(vocab, tok, piece, (int)sizeof piece, 0, 1);
        if (np > 0) {
            char *grown = realloc(text, text_len + (size_t)np + 1);
            if (!grown) return 1;
            text = grown;
            memcpy(text + text_len, piece, (size_t)np);
            text_len += (size_t)np;
            text[text_len] = 0;
        }
        if (step + 1 == n_gen) break;
        struct llama_batch one = llama_batch_get_one(&tok, 1);
        rc = llama_decode(ctx, one);
        if (rc != 0) {
            printf("\n");
            fprintf(stderr, "error: llama_decode failed at generation step %d (%d)\n", step, rc);
            return 1;
        }
        const float *l = llama_get_logits_ith(ctx, -1);
        if (!l) {
            fprintf(stderr, "error: no logits at generation step %d\n", step);
            return 1;
        }
        tok = argmax(l, n_vocab);
    }
    printf("\ngenerated_text %s\n", text);
    free(text);

    llama_batch_free(batch);
    free(prompt);
    llama_free(ctx);
    llama_model_free(model);
    llama_backend_free();
    return 0;
}
