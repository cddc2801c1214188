#!/usr/bin/env python3
"""Function lengths in runtime/src, engine/src and launcher/src of each tree given: count, mean,
median, how many are over 50 and 80 lines, and the longest. usage: fnlen.py TREE [TREE...]"""
import os, re, sys
def fns(root):
    out=[]
    for d in ["runtime/src","engine/src","launcher/src"]:
        for dp,_,fs in os.walk(os.path.join(root,d)):
            for f in fs:
                if not f.endswith(".rs"): continue
                lines=open(os.path.join(dp,f)).read().split("\n")
                i=0
                while i<len(lines):
                    m=re.match(r"^(\s*)(pub(\([a-z]+\))?\s+)?(const\s+)?(unsafe\s+)?(extern\s+\"C\"\s+)?fn\s+(\w+)",lines[i])
                    if m and not lines[i].rstrip().endswith(";"):
                        ind=m.group(1)
                        j=i
                        while j<len(lines) and not (lines[j].startswith(ind+"}") and len(lines[j].rstrip())==len(ind)+1):
                            j+=1
                            if j-i>2000: break
                        out.append((j-i+1, os.path.join(dp,f).replace(root+"/",""), m.group(7)))
                        i=j
                    i+=1
    return out
for root in sys.argv[1:]:
    f=fns(root); n=[x[0] for x in f]
    n.sort()
    print(f"{root}: {len(n)} fns, mean {sum(n)/len(n):.1f} lines, median {n[len(n)//2]}, >50 lines: {sum(1 for x in n if x>50)}, >80: {sum(1 for x in n if x>80)}, longest: {max(f)}")
